#!/bin/bash
# The four-way generation comparison of docs/generation.md: arlm_tiny for each variant and seed, then the
# perplexity of gutenberg_en's test split and WikiText-2's test set under each run's last checkpoint.
#   usage: run.sh OUT "variant:seed variant:seed ..."      (one run after another, one thread; two queues at once
#   on 2 cores); variants: deberta, ap, mt, abs. Reads ../shared/data from the repository root.
set -e
export OMP_NUM_THREADS=1
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
OUT=$1
PY=${PYTHON:-python}
mkdir -p "$OUT"
for item in $2; do
  v=${item%%:*}; s=${item##*:}
  case $v in
    deberta) extra="" ;;
    ap) extra="model.enhanced_mask_decoder=false model.position_biased_input=true" ;;
    mt) extra="objective=mt" ;;
    abs) extra="model.enhanced_mask_decoder=false model.position_biased_input=true model.relative_attention=false" ;;
  esac
  out=$OUT/$v-s$s
  if [ ! -f $out/done ]; then
    $PY "$ROOT/recipes/arlm_tiny.py" train.seed=$s train.output_dir=$out train.progress=false $extra > $out.log 2>&1
    for f in gutenberg:$ROOT/../shared/data/gutenberg_en/test.txt.gz wikitext2:$ROOT/../shared/data/wikitext2_raw_test/wiki.test.raw; do
      name=${f%%:*}; path=${f#*:}
      $PY "$ROOT/tools/perplexity.py" $out $path --no-progress > $out.$name.txt 2>&1
    done
    touch $out/done
  fi
done
