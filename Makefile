GO        ?= go
BIN       := bin/dispatch
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
BUILDTIME ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS   := -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.buildTime=$(BUILDTIME)
# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# report "context deadline exceeded" with no crasher when the budget ends
# (golang/go#75804, fixed in Go 1.27). About 5-10 s per target here.
FUZZTIME  ?= 300000x
SOAK_DURATION ?= 10m

.PHONY: build run test check unit fuzz bench soak clean

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/dispatch

# Build and run with the defaults (HTTP on 127.0.0.1:3000, secret "testing").
run: build
	./$(BIN)

# Everything CI runs: formatting, vet, the race-enabled test suite (including
# the short soak), and a short budget for every fuzz target.
test: check unit fuzz

check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

unit: build
	$(GO) test -race -count=1 -timeout 20m ./...

fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzParseMessage$$' -fuzztime=$(FUZZTIME) ./codec/
	$(GO) test -run='^$$' -fuzz='^FuzzParseFrameHeader$$' -fuzztime=$(FUZZTIME) ./codec/
	$(GO) test -run='^$$' -fuzz='^FuzzRequestHeadLength$$' -fuzztime=$(FUZZTIME) ./codec/
	$(GO) test -run='^$$' -fuzz='^FuzzTargets$$' -fuzztime=$(FUZZTIME) ./internal/readpause/
	$(GO) test -run='^$$' -fuzz='^FuzzParseTopic$$' -fuzztime=$(FUZZTIME) ./loop/relay/
	$(GO) test -run='^$$' -fuzz='^FuzzVerify$$' -fuzztime=$(FUZZTIME) ./loop/relay/
	$(GO) test -run='^$$' -fuzz='^FuzzRelayWire$$' -fuzztime=$(FUZZTIME) ./loop/relay/
	$(GO) test -run='^$$' -fuzz='^FuzzValidJSON$$' -fuzztime=$(FUZZTIME) ./loop/rooms/
	$(GO) test -run='^$$' -fuzz='^FuzzParseMonolithMessage$$' -fuzztime=$(FUZZTIME) ./loop/rooms/
	$(GO) test -run='^$$' -fuzz='^FuzzRoomsCluster$$' -fuzztime=$(FUZZTIME) ./loop/rooms/
	$(GO) test -run='^$$' -fuzz='^FuzzBusMessage$$' -fuzztime=$(FUZZTIME) ./cluster/

bench: build
	$(GO) build -o bin/fanoutfloor ./bench/cmd/fanoutfloor
	$(GO) run ./bench/cmd/dispatchbench -server $(BIN) -suite standard

soak: build
	SOAK_DURATION=$(SOAK_DURATION) $(GO) test -race -count=1 -timeout 30m -run 'Soak' -v ./cmd/dispatch/

clean:
	rm -rf bin
