#!/usr/bin/env sh
# The wheels the GPU machine's image lacks, for its Python 3.12 on x86-64 Linux, into .whl/ (ignored by git; the
# device call carries it, see benchmarks/gpu_check.py and docs/performance.md "GPU check"). Run from any directory,
# in the environment whose versions should travel:
#
#     sh benchmarks/gpu_wheels.sh
#
# datasets and omegaconf at the versions installed here, and those of their requirements that the image does not
# hold (checked against the image's package list in the device notes, for datasets 5.2 and omegaconf 2.4: dill and
# multiprocess; omegaconf 2.4 needs only PyYAML, which the image has; omegaconf 2.3 would need
# antlr4-python3-runtime 4.9, which has no wheel: build one with `pip wheel --no-deps`). Wheels of these names
# already in .whl/ are replaced: two versions of one package stop the install there.
set -eu
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
packages="datasets omegaconf dill multiprocess"
pins=""
for name in $packages; do
    pins="$pins $name==$("$python" -c "import importlib.metadata as m; print(m.version('$name'))")"
    rm -f .whl/"$name"-*.whl
done
mkdir -p .whl
# shellcheck disable=SC2086  # $pins is a list of requirements
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins
ls -1 .whl
du -ch .whl/*.whl | tail -1
