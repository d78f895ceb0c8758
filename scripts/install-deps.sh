#!/usr/bin/env bash
# Install what building and testing durakv needs, only when it is missing:
#   clang + libclang-dev  bindgen (librocksdb-sys) parses RocksDB's C header with libclang
#   protobuf-compiler     protoc, for raft-rs's prost codec
#   redis-tools           redis-cli and redis-benchmark: `make run` tells you to connect with them
#   chromium              headless, renders `durakv-sim explain`'s timeline in sim/tests/explain.rs
#   fuse3                 fusermount3 and the FUSE tools: the mounted simulated disk (durakv-disk) under
#                         RocksDB and the real binary (faults/tests/fuse_mount.rs, rocks_powerloss.rs,
#                         make powercut); /dev/fuse itself comes from the kernel (modprobe fuse)
#   ioredis 5 (npm)       a Node.js client with its defaults, in node/tests/node_inputs.rs; installed
#                         into $HOME/.cache/durakv/npm (DURAKV_NPM_DIR), nothing global
#   redis-py 8 (pip)      a current client library with its default settings, in node/tests/node_inputs.rs
#   rustfmt, clippy       part of `make test`
# Extras, installed only when named on the command line (no `make test` needs them):
#   etcd                  Debian's etcd-server (`etcd`), the other system `make bench-cluster` measures;
#                         `scripts/install-deps.sh etcd` installs it and nothing else
set -euo pipefail

apt_install() {
    echo "install-deps: installing Debian packages: $*"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to install $*" >&2; exit 1; }
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

if [ "${1:-}" = etcd ]; then
    if ! command -v etcd >/dev/null 2>&1; then
        apt_install etcd-server
        # The package enables and starts a system-wide etcd where systemd runs: the benchmark starts
        # its own members, and a stray one would share the machine with them.
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
            echo "install-deps: stopping and disabling the etcd service the package started"
            ${sudo:-} systemctl disable --now etcd || true
        fi
    fi
    exit 0
fi

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 \
    || need+=(libclang-dev)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)

if ((${#need[@]})); then
    apt_install "${need[@]}"
fi

# redis-py 8 (opens with HELLO 3 by default): node/tests/node_inputs.rs connects with it as a user would.
if command -v python3 >/dev/null 2>&1 \
    && ! python3 -c 'import redis, sys; sys.exit(0 if int(redis.__version__.split(".")[0]) >= 8 else 1)' 2>/dev/null; then
    echo "install-deps: installing redis-py 8 (pip)"
    python3 -m pip install -q 'redis>=8,<9'
fi

# ioredis 5: node/tests/node_inputs.rs connects with it as a Node.js user would.
npm_dir=${DURAKV_NPM_DIR:-$HOME/.cache/durakv/npm}
if command -v npm >/dev/null 2>&1 && [ ! -f "$npm_dir/node_modules/ioredis/package.json" ]; then
    echo "install-deps: installing ioredis 5 (npm) into $npm_dir"
    mkdir -p "$npm_dir"
    (cd "$npm_dir" && npm install --silent --no-audit --no-fund 'ioredis@5')
fi

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "install-deps: adding rustup component $component"
        rustup component add "$component"
    fi
done
