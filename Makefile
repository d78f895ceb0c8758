# durakv — the two commands are `make run` and `make test`; both install their own prerequisites.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

CARGO   ?= cargo
# One optimized, debug-info-free profile for tests, the local cluster and simulation (see Cargo.toml).
PROFILE ?= fast
export CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TERM_COLOR ?= never

.PHONY: all deps test fmt-check lint unit powercut sim sim-run fuzz test-large-snapshot run build bench bench-wal bench-fsm bench-snapshot bench-storage bench-sim bench-cluster clean help

all: test

help:
	@echo "make run    build the durakv binary and start a 3-node cluster on loopback (redis-cli -p 6379)"
	@echo "make test   every check and test: fmt, clippy, unit, integration, crash exploration, proptests"
	@echo "make powercut  power cuts of a real 3-node cluster on FUSE-mounted simulated disks (CUTS, FSYNC_MODE, SEED)"
	@echo "make test-large-snapshot  a 1 GiB snapshot written and installed by real nodes, no raft loop held up (LARGE_SNAPSHOT_MIB)"
	@echo "make bench  criterion benchmarks (numbers belong in docs/benchmarks.md)"
	@echo "make bench-cluster  3 durakv nodes against 3 etcd members, one closed-loop generator (CLIENTS, VALUE_SIZE, DURATION, ROUNDS, FSM_SYNC)"

deps:
	@scripts/install-deps.sh

fmt-check: deps
	$(CARGO) fmt --all -- --check

lint: deps
	$(CARGO) clippy --workspace --all-targets --profile $(PROFILE) -- -D warnings
	# The simulation build never compiles RocksDB: the node must build and lint without it.
	$(CARGO) clippy -p durakv -p durakv-faults --all-targets --no-default-features --profile $(PROFILE) -- -D warnings
	# The harness and its scenario tests exist only in the simulation build: lint that build too.
	$(MADSIM_ENV) $(CARGO) clippy -p durakv-sim --all-targets --profile $(PROFILE) -- -D warnings

unit: deps
	$(CARGO) test --workspace --profile $(PROFILE)

# The simulation: the same node code under madsim (RUSTFLAGS=--cfg madsim), in a target dir of its own so
# switching flags never rebuilds the normal build, and without RocksDB.
MADSIM_ENV = RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$(CARGO_TARGET_DIR)/madsim"
SCENARIO ?= scenarios/oom-kill-inside-wal-appends.toml
FUZZ_SEEDS ?= 200
# FUZZ_TIME (90s, 30m, 1h) runs until the budget is spent instead of FUZZ_SEEDS seeds.
FUZZ_TIME ?=
FUZZ_START ?= 0
SHARD ?= 0/1
FUZZ_OUT ?= fuzz-failures

sim: deps
	$(MADSIM_ENV) $(CARGO) test -p durakv-sim --profile $(PROFILE)

sim-run: deps
	$(MADSIM_ENV) $(CARGO) run -q -p durakv-sim --profile $(PROFILE) -- run $(SCENARIO) $(if $(SEED),--seed $(SEED)) $(if $(SWARM),--swarm)

fuzz: deps
	$(MADSIM_ENV) $(CARGO) run -q -p durakv-sim --profile $(PROFILE) -- fuzz scenarios/*.toml $(if $(FUZZ_TIME),--time $(FUZZ_TIME),--seeds $(FUZZ_SEEDS)) --start $(FUZZ_START) --shard $(SHARD) --out $(FUZZ_OUT)

test: fmt-check lint unit powercut sim

# Power cuts of a real 3-node cluster: each node's data dir and snapshot spool are FUSE mounts of the
# simulated disk (durakv-disk), cut at random instants (1, 2 or 3 nodes at once) under a recorded client
# load, then judged by the simulation's checkers (linearizability, durability, lists, counters).
# CUTS node power cuts in all, split over the fsm_sync modes (FSYNC_MODE: sync, nosync or both); SEED
# empty = a fresh random seed, printed with the command that repeats a failing run; SECTOR_ODDS
# (KEEP,DROP,GARBAGE) overrides the disks' fates of unsynced sectors at a power loss. A failing mode's
# logs land in POWERCUT_FAILURES/durakv-powercut-SEED-MODE/. Without FUSE
# (/dev/fuse, mount rights) it fails; DURAKV_ALLOW_FUSE_SKIP=1 makes that one loud SKIPPED line.
CUTS ?= 60
FSYNC_MODE ?= both
POWERCUT_FAILURES ?= powercut-failures
powercut: deps
	$(CARGO) build -p durakv --bin durakv --profile $(PROFILE)
	$(CARGO) build -p durakv-faults --features fuse --bin durakv-disk --profile $(PROFILE)
	$(CARGO) build -p durakv-sim --bin durakv-powercut --profile $(PROFILE)
	"$(CARGO_TARGET_DIR)/$(PROFILE)/durakv-powercut" --cuts $(CUTS) --fsm-sync $(FSYNC_MODE) $(if $(SEED),--seed $(SEED)) $(if $(SECTOR_ODDS),--sector-odds $(SECTOR_ODDS)) \
		--durakv-bin "$(CARGO_TARGET_DIR)/$(PROFILE)/durakv" --disk-bin "$(CARGO_TARGET_DIR)/$(PROFILE)/durakv-disk" \
		--failures "$(POWERCUT_FAILURES)"

# A long run, out of `make test`: real nodes write and install a snapshot of LARGE_SNAPSHOT_MIB MiB (1 GiB)
# while every raft loop keeps ticking (cluster_process.rs; `make test` runs the same test at 64 MiB).
# About 10 GiB of disk under $TMPDIR.
LARGE_SNAPSHOT_MIB ?= 1024
test-large-snapshot: deps
	DURAKV_LARGE_SNAPSHOT_MIB=$(LARGE_SNAPSHOT_MIB) $(CARGO) test -p durakv --profile $(PROFILE) --test cluster_process \
		-- --ignored --exact a_large_snapshot_is_written_and_installed_without_holding_up_a_raft_loop --nocapture

build: deps
	$(CARGO) build -p durakv --bin durakv --profile $(PROFILE)

# A 3-node cluster on loopback (Redis-protocol ports 6379-6381), data under ./data/; Ctrl-C stops it.
run: build
	@scripts/run-cluster.sh "$(CARGO_TARGET_DIR)/$(PROFILE)/durakv"

# Benches use the shared `fast` profile: a separate bench profile would compile RocksDB's C++ a second
# time (about 20 minutes here) for a few percent of speed.
bench: deps
	$(CARGO) bench --profile $(PROFILE) -p durakv-benches

bench-wal: deps
	$(CARGO) bench --profile $(PROFILE) -p durakv-benches --bench wal

bench-storage: deps
	$(CARGO) bench --profile $(PROFILE) -p durakv-benches --bench storage

bench-fsm: deps
	$(CARGO) bench --profile $(PROFILE) -p durakv-benches --bench fsm

# durakv against etcd (docs/benchmarks.md, "Cluster benchmark against etcd"): a fresh 3-node durakv
# cluster and a fresh 3-node etcd cluster (Debian's etcd-server, installed here when missing) on
# loopback, driven by one closed-loop generator (durakv-loadgen, benches/src/bin/loadgen/) that
# alternates the two systems run by run; prints one markdown table. About 4 minutes with the defaults.
# CLIENTS: client counts; VALUE_SIZE: bytes per value; WARMUP and DURATION: seconds per run; ROUNDS:
# passes over every client count and both systems; FSM_SYNC: the nodes' --fsm-sync (empty: the node's
# default, nosync; `sync` is the mode of the first table in docs/benchmarks.md, from before #17);
# SNAPSHOT_EVERY: the nodes' --snapshot-every (empty: their default); BENCH_DIR: where the data goes.
CLIENTS ?= 1,16,64,256
VALUE_SIZE ?= 256
WARMUP ?= 3
DURATION ?= 10
ROUNDS ?= 2
FSM_SYNC ?=
SNAPSHOT_EVERY ?=
BENCH_DIR ?=
bench-cluster:
	@scripts/install-deps.sh
	@scripts/install-deps.sh etcd
	$(CARGO) build -p durakv --bin durakv --profile $(PROFILE)
	$(CARGO) build -p durakv-benches --bin durakv-loadgen --profile $(PROFILE)
	"$(CARGO_TARGET_DIR)/$(PROFILE)/durakv-loadgen" cluster \
		--durakv-bin "$(CARGO_TARGET_DIR)/$(PROFILE)/durakv" --etcd-bin "$$(command -v etcd)" \
		--clients $(CLIENTS) --value-size $(VALUE_SIZE) --warmup $(WARMUP) --duration $(DURATION) \
		--rounds $(ROUNDS) $(if $(FSM_SYNC),--fsm-sync $(FSM_SYNC)) $(if $(SNAPSHOT_EVERY),--snapshot-every $(SNAPSHOT_EVERY)) \
		$(if $(BENCH_DIR),--dir $(BENCH_DIR)) \
		--label "durakv $$(git rev-parse --short HEAD 2>/dev/null || echo '?')$$(git diff --quiet HEAD -- node 2>/dev/null || echo ' with local changes')"

# Simulator speed (docs/benchmarks.md, "Simulation speed"): simulated seconds per wall second on the
# standard scenario, and swarm seeds per second over every scenario from a fixed seed range.
BENCH_SEEDS ?= 40
bench-sim: deps
	$(MADSIM_ENV) $(CARGO) run -q -p durakv-sim --profile $(PROFILE) -- bench --seeds $(BENCH_SEEDS)

bench-snapshot: deps
	$(CARGO) bench --profile $(PROFILE) -p durakv-benches --bench snapshot
	$(CARGO) bench --profile $(PROFILE) -p durakv-benches --bench snapshot_cold

clean:
	$(CARGO) clean
