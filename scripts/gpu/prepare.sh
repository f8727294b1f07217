#!/usr/bin/env bash
# Run on THIS machine (it has a network; the GPU machine has none) before calling the device: fills the two
# git-ignored folders that scripts/gpu/run_gpu_check.sh needs there, and prints their sizes (carry: 64 MiB).
#   .whl/                what the GPU machine lacks for DeepSpeed, exactly as the workplace's make-wheels.sh
#                        builds it (pydantic 2.14.4 + core, annotated-types, typing-inspection,
#                        typing-extensions, hjson; a pure-Python deepspeed 0.19.8 wheel, ops compiled just in
#                        time), for CPython 3.12 manylinux; the deepspeed wheel is built against this
#                        checkout's .venv torch (2.13 CPU, as make-wheels.sh's) instead of a fresh venv.
#   .data/gpu/tokenizer  the bundled SmolLM2 tokenizer files (the random 1B model's tokenizer).
# Not shipped: datasets (+ pyarrow, pandas: ~68 MB of wheels, over the carry limit); where the machine lacks
# it, the bench runs the recipe with scripts/gpu/shim instead (see that file).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl .data/gpu/tokenizer
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
for pkg in pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
           typing-extensions==4.16.0 hjson==3.1.0; do
  name=$(echo "${pkg%%==*}" | tr - _)
  ls .whl/"${name}"-*.whl >/dev/null 2>&1 && continue
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d .whl "$pkg"
done
if ! ls .whl/deepspeed-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 .venv/bin/python -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation \
    deepspeed==0.19.8 -w .whl
fi
src=.data/models/smollm2-135m-instruct
if [ ! -f "$src/tokenizer.json" ]; then
  .venv/bin/python -c "from pathlib import Path; from eventlog.catalog import ensure_base_model as e; \
e(Path('.data/models'), 'smollm2-135m-instruct')"
fi
for f in tokenizer.json tokenizer_config.json chat_template.jinja special_tokens_map.json; do
  if [ -f "$src/$f" ]; then cp "$src/$f" .data/gpu/tokenizer/; fi
done
ls -la .whl .data/gpu/tokenizer
du -sch .whl .data/gpu | tail -1
