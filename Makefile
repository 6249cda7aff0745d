# go-ceph needs the tag of the Ceph release it builds against (Pacific here).
GO_TAGS   ?= pacific
GO        ?= go
# grpcnotrace builds gRPC without golang.org/x/net/trace, whose templates look
# methods up by name and so keep every exported method of every type linked:
# 4 MB less code, and as much less memory.
GOFLAGS_T := -tags $(GO_TAGS),grpcnotrace
BIN       ?= bin
CLUSTER_DIR ?= $(CURDIR)/.cluster
TEST_TIMEOUT ?= 75m
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.7.0

.PHONY: all build test test-kernel unit fuzz demo bench e2e deps cluster-up cluster-down vet image clean

all: build

## build: the driver and pelagicctl into ./bin
build:
	$(GO) build $(GOFLAGS_T) -ldflags "-X main.version=$(VERSION)" -o $(BIN)/ ./cmd/...
	ln -sf pelagicctl $(BIN)/kubectl-pelagic

## deps: the Debian packages the build and the local cluster need
deps:
	bash e2e/ceph/deps.sh

## test: every test, unit and integration, against a local cluster this target starts and stops,
## then each fuzz test for FUZZ_TIME
test: deps vet
	bash e2e/run-tests.sh --report $(GO) test $(GOFLAGS_T) -json -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) --no-print-directory fuzz

FUZZ_TIME ?= 10s
FUZZ_TARGETS := pkg/rbd:FuzzCreateVolumeRequest pkg/rbd:FuzzNodeStageRequest pkg/rbd:FuzzVolumeAndSnapshotIDs \
	pkg/volumeid:FuzzParse

## fuzz: each fuzz test (request decoding, volume and snapshot IDs) for FUZZ_TIME; make test runs it
fuzz:
	@set -e; log=$$(mktemp); trap 'rm -f "$$log"' EXIT; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} ($(FUZZ_TIME))"; \
		$(GO) test $(GOFLAGS_T) -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZ_TIME) ./$${t%%:*}/ >"$$log" 2>&1 || \
			{ cat "$$log"; exit 1; }; \
		tail -n 1 "$$log"; \
	done

## test-kernel: only the kernel client tests (krbd, rbd-nbd) in a guest kernel under QEMU; make test runs them too
test-kernel: deps
	$(GO) test $(GOFLAGS_T) -count=1 -v -timeout 30m ./e2e/vm/

## unit: the tests that need no cluster
unit:
	$(GO) test $(GOFLAGS_T) -count=1 ./cmd/... ./pkg/...

## e2e: the driver on a one-node Kubernetes this target starts and stops (e2e/k8s):
## the scenarios' pass/fail table, with timings. KEEP=1 leaves the clusters up.
e2e: deps
	bash e2e/k8s/run.sh

## demo: the main job: a local cluster, the driver, and a volume's life on it
demo: deps build
	bash e2e/demo.sh

## bench: the driver against the floor (the same Ceph work done directly), on a local
## cluster this target starts and stops; BENCH_ARGS go to the program (e.g. -json)
bench: deps build
	bash e2e/bench.sh $(BENCH_ARGS)

cluster-up: deps
	bash e2e/ceph/up.sh $(CLUSTER_DIR)

cluster-down:
	bash e2e/ceph/down.sh $(CLUSTER_DIR)

## vet: go vet, gofmt and staticcheck, all with the Ceph tag
vet:
	$(GO) vet $(GOFLAGS_T) ./...
	@test -z "$$(gofmt -l cmd pkg e2e)" || { echo "gofmt needed:"; gofmt -l cmd pkg e2e; exit 1; }
	$(GO) run $(STATICCHECK) $(GOFLAGS_T) ./...

image:
	docker build -t pelagic:$(VERSION) .

clean:
	rm -rf $(BIN)
