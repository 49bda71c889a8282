#!/usr/bin/env bash
# One GPU sitting, end to end: a teacher of CONFIG on the shipped VAE's latent space, then its 2-step
# student, each for a wall-clock budget, then the judge on EVAL_N held-out prompts (32 frames, the
# student at its default steps, on the same device). The shipped (fp16 EMA) checkpoints land in OUT,
# the logs and the judge's figures (student-eval.jsonl) in OUT/logs.tar.gz.
#
# The teacher's learning-rate horizon is sized to its budget: a short probe run (which also renders and
# encodes the latent pool, cached for the real run) times a step, and the real run (--force) gets
# `steps` = budget / step time. With DEADLINE_S (seconds from the start) the teacher's budget shrinks
# so that STUDENT_RESERVE_S are left for the student. Checkpoints over 15 MB are split into .partNN
# files (cat them back). The teacher starts from INIT's weights (a teacher checkpoint of CONFIG's
# architecture; a fresh optimizer): by default the committed GPU teacher, so each sitting continues it.
# A lease's calls can split the work: STUDENT_MIN=0 trains only the teacher, TEACHER=<its checkpoint,
# carried back> only the student (one device call may run at most 10 minutes).
#
#   OUT=/tmp/out bash tools/gpu_train.sh                                     # on a GPU machine
#   STUDENT_MIN=0 OUT=/tmp/out DEADLINE_S=450 bash tools/gpu_train.sh                # call 1: the teacher only
#   TEACHER=runs/gpu/teacher.safetensors STUDENT_MIN=3.0 OUT=/tmp/out bash tools/gpu_train.sh       # call 2: the student only
#   INIT= CONFIG=experiments/gpu-wide-g2-bf16.json OUT=/tmp/out bash tools/gpu_train.sh   # a wide DiT from scratch
#   INIT= DEVICE=cpu CONFIG=tiny-ish.json VAE=... TEACHER_MIN=0.3 STUDENT_MIN=0.2 bash tools/gpu_train.sh   # a dry run
# Run from the repository root; edgegen need not be installed (a lent GPU machine has torch but no edgegen).
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-experiments/gpu-default-g2-init.json}
INIT=${INIT-checkpoints/teacher-gpu-default-g2.safetensors}  # set INIT= (empty) to train the teacher from scratch
VAE=${VAE:-edgegen/assets/default/checkpoint.safetensors}
TEACHER_MIN=${TEACHER_MIN:-5.3}
STUDENT_MIN=${STUDENT_MIN:-1.2}  # 0: no student (a teacher-only call)
TEACHER=${TEACHER:-}             # a teacher checkpoint: skip the teacher, distil a student from it (a student-only call)
PROBE_STEPS=${PROBE_STEPS:-60}
DEADLINE_S=${DEADLINE_S:-0}
STUDENT_RESERVE_S=${STUDENT_RESERVE_S:-180}
EVAL_N=${EVAL_N:-200}
RUN=${RUN:-/tmp/gpurun}
OUT=${OUT:?set OUT to the folder for the results}
PY=${PY:-python3}
if [ -n "$TEACHER" ] && [ "$STUDENT_MIN" = "0" ]; then
    echo "gpu_train: TEACHER with STUDENT_MIN=0 leaves nothing to do; give the student minutes or unset TEACHER" >&2
    exit 2
fi
INIT_ARGS=()
if [ -n "$INIT" ]; then INIT_ARGS=(--init "$INIT"); fi
T0=$(date +%s)
stamp() { echo "[gpu_train +$(( $(date +%s) - T0 ))s] $*"; }
mkdir -p "$RUN" "$OUT"
logs=()  # what this call made, for OUT/logs.tar.gz (RUN may hold an earlier call's files)

ship() {  # ship(stage): the fp16 EMA checkpoint into OUT, split under 15 MB a file
    $PY -c "import sys; from edgegen.model.checkpoint import ship_checkpoint; ship_checkpoint(sys.argv[1], sys.argv[2])" \
        "$RUN/$1/last.safetensors" "$OUT/$1.safetensors"
    rm -f "$OUT/$1.safetensors.part"*
    if [ "$(stat -c %s "$OUT/$1.safetensors")" -gt 15000000 ]; then
        split -b 15000000 -d "$OUT/$1.safetensors" "$OUT/$1.safetensors.part" && rm "$OUT/$1.safetensors"
    fi
}

train_teacher() {  # the probe, the horizon sized to the budget, the teacher; writes $RUN/config.json
    stamp "probe: $PROBE_STEPS teacher steps of $CONFIG on $DEVICE (renders and encodes the latent pool once)"
    $PY -m edgegen train teacher --config "$CONFIG" --out "$RUN" --vae "$VAE" --device "$DEVICE" \
        --steps "$PROBE_STEPS" --no-progress --force ${INIT_ARGS[@]+"${INIT_ARGS[@]}"}
    local reserve=$STUDENT_RESERVE_S
    if [ "$STUDENT_MIN" = "0" ]; then reserve=0; fi  # a teacher-only call keeps nothing back
    $PY - "$CONFIG" "$RUN" "$TEACHER_MIN" "$DEADLINE_S" "$(( $(date +%s) - T0 ))" "$reserve" <<'EOF'
import json, sys
from dataclasses import replace
from pathlib import Path
from edgegen.model.config import load_config
config, run, minutes = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
deadline, elapsed, reserve = (float(a) for a in sys.argv[4:7])
if deadline > 0:
    minutes = max(0.5, min(minutes, (deadline - elapsed - reserve) / 60))
(run / "teacher_minutes").write_text(f"{minutes:.2f}")
rows = [json.loads(line) for line in open(run / "teacher" / "log.jsonl") if '"loss"' in line]
if len(rows) < 2:
    sys.exit(f"gpu_train: the probe logged {len(rows)} loss rows; set PROBE_STEPS to at least twice the teacher's log_every")
(s0, e0), (s1, e1) = (rows[0]["step"], rows[0]["elapsed_s"]), (rows[-1]["step"], rows[-1]["elapsed_s"])
dt = (e1 - e0) / max(1, s1 - s0)
cfg, tcfg = load_config(config)  # a config name or a .json path
steps = max(2 * tcfg.teacher.warmup, int(0.95 * minutes * 60 / dt))
tcfg = replace(tcfg, teacher=replace(tcfg.teacher, steps=steps))
json.dump({"model": cfg.to_dict(), "train": tcfg.to_dict()}, open(run / "config.json", "w"), indent=2)
print(f"[gpu_train] teacher step {dt * 1000:.1f} ms ({rows[-1]['clips_per_s']:.0f} clips/s): horizon {steps} steps for {minutes} min")
EOF
    local minutes
    minutes=$(cat "$RUN/teacher_minutes")
    stamp "teacher: $minutes min"
    $PY -m edgegen train teacher --config "$RUN/config.json" --out "$RUN" --vae "$VAE" --device "$DEVICE" \
        --minutes "$minutes" --no-progress --force ${INIT_ARGS[@]+"${INIT_ARGS[@]}"}
    ship teacher
    logs+=(config.json teacher/log.jsonl)
}

train_student() {  # train_student(teacher checkpoint, config): rollouts, reflow for STUDENT_MIN, the judge
    stamp "student of $1: rollouts, then $STUDENT_MIN min"
    $PY -m edgegen train student --config "$2" --out "$RUN" --teacher "$1" --device "$DEVICE" \
        --minutes "$STUDENT_MIN" --no-progress --force
    ship student
    logs+=(student/log.jsonl)
    if [ "$EVAL_N" -gt 0 ]; then
        stamp "judge: $EVAL_N held-out prompts, 32 frames"
        $PY -m edgegen.model.evaluate "$RUN/student/last.safetensors" --split heldout --n "$EVAL_N" --frames 32 \
            --device "$DEVICE" | tee "$RUN/student-eval.jsonl"
        logs+=(student-eval.jsonl)
    fi
}

if [ -z "$TEACHER" ]; then
    train_teacher
    STUDENT_CONFIG="$RUN/config.json"
    TEACHER="$RUN/teacher/last.safetensors"
else
    STUDENT_CONFIG="$CONFIG"  # the student stage does not read the teacher's horizon
fi
if [ "$STUDENT_MIN" != "0" ]; then
    train_student "$TEACHER" "$STUDENT_CONFIG"
fi
tar czf "$OUT/logs.tar.gz" -C "$RUN" "${logs[@]}"
stamp "done"
ls -la "$OUT"
