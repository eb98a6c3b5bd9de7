#!/usr/bin/env bash
# Installs kmq's build dependencies from Debian 12 packages (skips apt when all are present).
#   --fuzz: also clang and libFuzzer (clang's runtime), for scripts/fuzz.sh
#   --qat:  also Debian's PyTorch (python3-torch, CPU) for the QAT recipe's tests
#           (scripts/qat/test_qat.py); best effort: where it cannot be installed those tests skip
set -euo pipefail
if [ "${1:-}" = --qat ]; then
  if /usr/bin/python3 -c "import torch, numpy" 2>/dev/null; then
    echo "install-deps: PyTorch present"
    exit 0
  fi
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install-deps: installing python3-torch python3-numpy (for the QAT tests)"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      python3-torch python3-numpy; } || echo "install-deps: PyTorch not installed: the QAT tests will skip"
  exit 0
fi
pkgs=(build-essential cmake pkg-config libcli11-dev libfmt-dev nlohmann-json3-dev libpcre2-dev doctest-dev
      g++-aarch64-linux-gnu qemu-user)  # the last two: NEON kernels tested under qemu (scripts/test-neon.sh)
[ "${1:-}" = --fuzz ] && pkgs+=(clang libclang-rt-14-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all dependencies present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
