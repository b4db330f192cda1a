#!/bin/bash
# The four-way generation comparison of docs/generation.md: arlm_tiny for each variant and seed, then the
# perplexity of gutenberg_en's test split and WikiText-2's test set under each run's last checkpoint.
#   usage: run.sh OUT "variant[@lr]:seed ..."    one run after another, one thread (two queues at once on 2 cores)
#   variants: deberta, ap, mt, abs; @lr overrides the recipe's optim.lr (mt@2e-3:0 -> OUT/mt-lr2e-3-s0).
#   What docs/generation.md reports: deberta, ap and abs at the recipe's lr, seeds 0-2; mt at 4e-3 (seeds 0-1),
#   1e-3 (seed 0) and 2e-3 (seeds 0-2), and mt at 2e-3 for 2400 steps (seed 0: OUT/mt2x-lr2e-3-s0, by hand with
#   train.max_steps=2400 train.save_every=800). Reads ../shared/data from beside the repository.
set -e
export OMP_NUM_THREADS=1
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
OUT=$1
PY=${PYTHON:-python}
mkdir -p "$OUT"
for item in $2; do
  v=${item%%:*}; s=${item##*:}
  lr=""; name=$v
  case $v in *@*) lr=${v#*@}; v=${v%@*}; name=$v-lr$lr ;; esac
  case $v in
    deberta) extra="" ;;
    ap) extra="model.enhanced_mask_decoder=false model.position_biased_input=true" ;;
    mt) extra="objective=mt" ;;
    abs) extra="model.enhanced_mask_decoder=false model.position_biased_input=true model.relative_attention=false" ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
  [ -n "$lr" ] && extra="$extra optim.lr=$lr"
  out=$OUT/$name-s$s
  [ -f "$out/done" ] && continue
  $PY "$ROOT/recipes/arlm_tiny.py" train.seed=$s train.output_dir=$out train.progress=false train.max_steps=1200 \
      train.eval_batches=8 $extra > $out.log 2>&1
  for f in gutenberg:$ROOT/../shared/data/gutenberg_en/test.txt.gz \
           wikitext2:$ROOT/../shared/data/wikitext2_raw_test/wiki.test.raw; do
    $PY "$ROOT/tools/perplexity.py" $out ${f#*:} --no-progress > $out.${f%%:*}.txt 2>&1
  done
  touch "$out/done"
done
