#!/usr/bin/env bash
# Sweep modes × Q-cache weights over a prompt file, then evaluate and compare in one go.
#
#   scripts/sweep.sh -p PROMPT_FILE [-o OUT] [-c CONFIG] [-k CKPT | -r] [-C CLIP_CKPT] \
#       [-m "t2v t2v_TTqcache_attn1"] [-w "0.5 0.9"] [-s SUBJECT] [-e "evaluate.py args"] \
#       [-- videocrafter_main.py args]
#
# Paths are relative to the folder you run it from; OUT defaults to results/sweep there.
# Layout: OUT/videos/<prompt>/<experiment>.gif (one experiment per setting, named
# <mode> or <mode>_w<weight>), OUT/report/metrics.{csv,json} (VBench's dimensions and ours),
# OUT/report/summary.csv, OUT/report/consistency.png, OUT/report/<prompt>_grid.gif and
# <prompt>_sheet.png. Weights apply to modes with a Q-cache; other modes run once.
# -s gives the subject that the sacfa and srg modes need (--subject; ignored by other modes).
# -r (random video-model weights) also scores with random-initialised DINO/CLIP
# (evaluate.py --random_feature_models): it runs offline, and its VBench scores mean nothing.
set -euo pipefail
# The project's scripts, wherever this is run from; every path the user gives stays relative to
# the user's folder (a config path that is not there falls back to the project's configs/).
repo="$(cd "$(dirname "$0")/.." && pwd)"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

prompt_file="" out="results/sweep" config="configs/inference_t2v_512_v2.0.yaml" ckpt="" random_init=0
modes="t2v t2v_TTqcache_attn1 t2v_TTqcache_attn1_unilatent" weights="0.9" clip_ckpt="" subject="" eval_extra=""
while getopts "p:o:c:k:rm:w:C:s:e:h" opt; do
  case "$opt" in
    p) prompt_file=$OPTARG ;;
    o) out=$OPTARG ;;
    c) config=$OPTARG ;;
    k) ckpt=$OPTARG ;;
    r) random_init=1 ;;
    m) modes=$OPTARG ;;
    w) weights=$OPTARG ;;
    C) clip_ckpt=$OPTARG ;;
    s) subject=$OPTARG ;;
    e) eval_extra=$OPTARG ;;
    h) usage 0 ;;
    *) usage 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
extra=("$@")

[[ -n "$prompt_file" ]] || { echo "error: -p PROMPT_FILE is required" >&2; usage 2; }
[[ -f "$prompt_file" ]] || { echo "error: prompt file not found: $prompt_file" >&2; exit 2; }
if [[ $random_init == 1 ]]; then weights_args=(--random_init)
elif [[ -n "$ckpt" ]]; then weights_args=(--ckpt_path "$ckpt")
else echo "error: give a checkpoint with -k CKPT (or -r for random weights)" >&2; exit 2; fi

subject_args=()
[[ -n "$subject" ]] && subject_args=(--subject "$subject")

python=${PYTHON:-python}
videos="$out/videos" report="$out/report"
mkdir -p "$videos" "$report"

for mode in $modes; do
  if [[ "$mode" == *qcache* ]]; then mode_weights=$weights; else mode_weights="-"; fi
  for w in $mode_weights; do
    if [[ "$w" == "-" ]]; then exp="$mode" wargs=(); else exp="${mode}_w${w}" wargs=(--qcache_weight "$w"); fi
    echo "== $exp"
    "$python" "$repo/videocrafter_main.py" --config "$config" "${weights_args[@]}" --prompt_file "$prompt_file" \
      --mode "$mode" "${wargs[@]}" "${subject_args[@]}" --experiment "$exp" --output_dir "$videos" --no_progress "${extra[@]}"
  done
done

eval_args=()
[[ -n "$clip_ckpt" ]] && eval_args+=(--clip_ckpt "$clip_ckpt")
# Random video weights are for trying things offline: the feature models follow suit, so the
# sweep never waits on a download.
[[ $random_init == 1 ]] && eval_args+=(--random_feature_models)
read -r -a extra_eval <<< "$eval_extra"
"$python" "$repo/scripts/evaluate.py" "$videos" --out "$report" "${eval_args[@]}" "${extra_eval[@]}"
for prompt_dir in "$videos"/*/; do
  name=$(basename "$prompt_dir")
  compgen -G "$prompt_dir*.gif" >/dev/null || compgen -G "$prompt_dir*.mp4" >/dev/null || continue
  "$python" "$repo/scripts/compare.py" --prompt_dir "$prompt_dir" --out "$report/${name}_grid.gif" \
    --sheet "$report/${name}_sheet.png" --quiet
done
echo "report: $report"
