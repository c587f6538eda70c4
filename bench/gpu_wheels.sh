#!/usr/bin/env bash
# Downloads, here (PyPI reachable), the wheels bench/gpu_check.sh installs on the GPU machine, into
# bench/wheels/ (ignored by git; the device call carries it: carry=["bench/wheels"]).
#
#   bash bench/gpu_wheels.sh
#
# The GPU machine (KINDS.md, nvidia-h200) has Python 3.12, its own torch 2.11 + CUDA 13, triton,
# transformers 5.17, accelerate 1.15, tokenizers 0.23.2, huggingface-hub 1.33, safetensors, numpy,
# pandas, pyarrow, xxhash, fsspec, jinja2, rich, psutil, py-cpuinfo, msgpack, ninja, einops, pyyaml,
# typer, nvidia-ml-py, and no network. What the check needs beyond that is below, at the versions
# this project is tested with on CPU, for CPython 3.12 on manylinux x86_64; nothing here replaces
# torch. Two have no wheel on PyPI and are built here from their sdists into pure-Python wheels:
# antlr4-python3-runtime (hydra's parser) and deepspeed (DS_BUILD_OPS=0: its CUDA ops compile on
# first use, and the check uses none of them). Transformer Engine cannot be carried: its CUDA 13
# core is a 276.5 MB wheel (transformer_engine_cu13 2.20.2) and its torch extension an sdist that
# compiles for tens of minutes against the machine's torch.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
    hydra-core==1.3.8 omegaconf==2.3.1              # lwm.config (+ antlr4 below)
    megatron-core==0.16.1                            # backend=megatron, CPT shard format
    hjson==3.1.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0
    typing-inspection==0.4.2 typing-extensions==4.16.0   # deepspeed's config (pydantic)
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19   # sft, rl (TRL)
    transformers==5.24.0 accelerate==1.16.0 tokenizers==0.23.3      # as tested, not the machine's 5.17
    regex==2026.5.9 packaging==26.2                  # transformers 5.24 checks regex >= 2025.10.22 at import
    cydifflib==1.2.0                                 # lwm.domains.base (similarity)
)
SDISTS=(antlr4-python3-runtime==4.9.3 deepspeed==0.19.8)
LIMIT_MIB=56   # the call carries 64 MiB in all: the working tree travels too

dest=bench/wheels
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$tmp" "${WHEELS[@]}"
# pure Python: built wheels work on any Python 3; deepspeed's setup.py imports torch (this one)
DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation --no-binary :all: -w "$tmp" "${SDISTS[@]}"
rm -rf "$dest"
mkdir -p "$dest"
mv "$tmp"/*.whl "$dest"/
python3 - "$dest" "$LIMIT_MIB" <<'EOF'
"""Sizes and total; and every requirement of a carried wheel is carried or on the machine."""
import re, sys, zipfile
from pathlib import Path
from packaging.markers import default_environment
from packaging.requirements import Requirement
# The image's Python packages (KINDS.md, nvidia-h200, read 2026-11-17) the carried wheels require.
ON_MACHINE = set("""einops filelock fsspec huggingface-hub jinja2 msgpack ninja numpy pandas psutil py-cpuinfo
    pyarrow pyyaml safetensors torch tqdm typer xxhash""".split())
dest, limit = Path(sys.argv[1]), float(sys.argv[2])
env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_machine": "x86_64", "implementation_name": "cpython", "extra": ""}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
wheels, reqs, total = sorted(dest.glob("*.whl")), {}, 0
for w in wheels:
    total += w.stat().st_size
    print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    if not re.search(r"-(py3-none-any|cp312-cp312|cp3\d+-abi3|py312-none-any)", w.name):
        sys.exit(f"{w.name}: not for CPython 3.12")
    with zipfile.ZipFile(w) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    reqs[norm(re.search(r"^Name: (.*)$", meta, re.M).group(1))] = re.findall(r"^Requires-Dist: (.*)$", meta, re.M)
print(f"{total / 2**20:7.2f} MiB  in {len(wheels)} wheels ({dest})")
unchecked = {}
for name, lines in reqs.items():
    for line in lines:
        r = Requirement(line)
        if (r.marker and not r.marker.evaluate(env)) or norm(r.name) in reqs:
            continue
        if norm(r.name) not in ON_MACHINE:
            sys.exit(f"{name} requires {r}, neither carried nor on the GPU machine: add it to WHEELS")
        if r.specifier:
            unchecked.setdefault(norm(r.name), set()).add(str(r.specifier))
print("taken from the machine, versions not checked here (install.txt shows them there): "
      + "; ".join(f"{n} {', '.join(sorted(s))}" for n, s in sorted(unchecked.items())))
if total > limit * 2**20:
    sys.exit(f"more than {limit} MiB: the device call carries 64 MiB with the working tree")
EOF
