#!/usr/bin/env bash
# scripts/gpusim/build.sh [DEST]: build the functional GPU simulator (patched GPGPU-Sim 4.2, sm_75
# PTX) that `make test-gpusim` runs the CUDA kernels on, into DEST (default
# ~/.cache/pesc_kernels/gpgpu-sim, outside the repository, reused by later runs).
#
# The simulator's source, build script and base patch are not part of this repository: they come
# from PESC_GPGPUSIM_SRC (by default the shared gpgpu-sim folder beside the repository). This script
# copies that folder to DEST/source, appends this project's own simulator patch
# (scripts/gpusim/gpgpusim-pesc.patch, fixes listed at its top) to the base patch there, and runs
# the copied build.sh, which unpacks, patches and compiles the simulator (about 1.5 to 4 minutes
# on 2 cores) and is a no-op when DEST was already built from the same inputs. Programs compile
# and run against DEST through scripts/gpusim/with-sim. A lock keeps concurrent builds of one
# DEST apart.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
src=${PESC_GPGPUSIM_SRC:-$repo/../shared/gpgpu-sim}
dest=${1:-${PESC_GPUSIM_HOME:-$HOME/.cache/pesc_kernels/gpgpu-sim}}
base_patch=gpgpusim-4.2-functional.patch

[ -f "$src/build.sh" ] && [ -f "$src/$base_patch" ] ||
  { echo "scripts/gpusim/build.sh: no GPGPU-Sim source at $src (set PESC_GPGPUSIM_SRC)" >&2; exit 1; }
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

exec 9> "$dest.lock"
flock 9

# Stage the source: the shared files as they are, except the base patch, which gets ours appended
# (GNU patch applies the concatenation in order, so ours sees the base patch's result).
stage=$dest/source
rm -rf "$stage.new"
cp -r "$src" "$stage.new"
chmod -R u+w "$stage.new"
cat "$src/$base_patch" "$here/gpgpusim-pesc.patch" > "$stage.new/$base_patch"
rm -rf "$stage"
mv "$stage.new" "$stage"

bash "$stage/build.sh" "$dest"
