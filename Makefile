# herd — build, test, benchmark. Every target installs what it needs itself,
# so a fresh Debian/Ubuntu machine needs nothing but this file and root.

SHELL := /bin/bash
# The Go that go.mod asks for: `go` on PATH when it is new enough, else the same
# version fetched once through the Go module proxy into Go's module cache (see
# scripts/go; with no go at all it apt-installs golang-go to do that fetch).
GO ?= $(CURDIR)/scripts/go
export GOTOOLCHAIN ?= auto
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN := bin
STATE ?= /var/lib/herd
# Long QEMU tests are included; the whole suite must stay well inside CI's 90 min.
# The timeout sits just inside it, so a slow run ends in go test's own panic,
# which names the tests running then (testsummary prints it), not in CI's kill.
TEST_TIMEOUT ?= 86m

# Debian packages the tools and tests use (one per line in deps.txt is overkill;
# keep this list the single source).
APT_PACKAGES := \
	mmdebstrap squashfs-tools gpg gpgv ca-certificates e2fsprogs cpio zstd fdisk gcc \
	qemu-system-x86 qemu-utils ipxe-qemu ipxe ovmf \
	iproute2 isc-dhcp-client udhcpc busybox-static atftp curl socat python3 python3-scapy \
	slapd ldap-utils nfs-ganesha nfs-ganesha-vfs \
	openssh-client sshpass sudo \
	kea-admin dnsmasq-base tftpd-hpa nginx-light wrk hyperfine \
	chromium lintian systemd cryptsetup-bin \
	openipmi ipmitool tmux \
	sbsigntool systemd-boot-efi \
	swtpm swtpm-tools tpm2-tools

.PHONY: all deps build test e2e unit bench demo fuzz clean go deb

all: build

# Installs every Debian package above, only when one is missing; apt-get update first.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Building needs only Go (scripts/go brings it); the targets that run tools or
# tests install the Debian packages first.
build:
	mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/herd ./cmd/herd
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/herd-boot ./cmd/herd-boot

# The image store the tests build into (testlab.TestStore), kept across runs
# for its stage cache. Each change to herd-boot makes new image IDs there, so
# `make test` first keeps only the newest 16 images (a whole run builds fewer)
# and the stages they were built from: a machine that runs the suite again and
# again would otherwise fill its disk (CI did, at 3662 s). The --config names
# no file: the test store has no nodes, so no pins. A prune that fails (a
# user who may not write the store) is reported and the tests run anyway.
TEST_STORE := /var/tmp/herd-test-store

# The README's test command: every package, the QEMU end-to-end suite included.
# scripts/testsummary prints go test's usual lines, then the counts and every
# skipped test with its reason; under CI=true a skip for a missing
# prerequisite fails the run (deliberate skips say "deliberate:").
# TestLab's package is the longest and goes first (go test starts packages
# in the order named, two at a time on 2 cores); the second slot runs
# image/nodeboot's QEMU tests, then qemu-tests/solo's own small labs beside
# TestLab's rollouts, then the short packages.
test: deps build
	$(GO) vet ./...
	-$(BIN)/herd --state $(TEST_STORE) --config /nonexistent/herd.yaml image gc --keep 16
	df -h /var/tmp /tmp
	$(GO) build -o $(BIN)/testsummary ./scripts/testsummary
	set -o pipefail; HERD_BIN=$(CURDIR)/$(BIN)/herd HERD_BOOT_BIN=$(CURDIR)/$(BIN)/herd-boot \
		$(GO) test -json -count=1 -timeout $(TEST_TIMEOUT) ./qemu-tests/ ./image/nodeboot/ ./qemu-tests/solo/ ./... 2>&1 | $(BIN)/testsummary | tee test.log

unit: deps build
	$(GO) test -count=1 -short ./...

e2e: deps build
	HERD_BIN=$(CURDIR)/$(BIN)/herd HERD_BOOT_BIN=$(CURDIR)/$(BIN)/herd-boot \
		$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./qemu-tests/...

# Short fuzzing runs of every fuzz target (CI runs these through `make test`'s seeds).
fuzz: deps build
	PATH="$$($(GO) env GOROOT)/bin:$$PATH" ./scripts/fuzz.sh 20s

# Benchmarks against reference tools run side by side; prints ratios.
bench: deps build
	PATH="$$($(GO) env GOROOT)/bin:$$PATH" ./scripts/bench.sh

# The README's first command: build the default image, serve it, netboot a QEMU node.
demo: deps build
	./scripts/demo.sh

# A Debian/Ubuntu package in bin/ (nfpm, pinned, run through the Go module
# proxy): binaries, the hardened herd.service, cobra's man pages and shell
# completions, /etc/herd/herd.yaml as a conffile. Staged in $(BIN)/deb.
NFPM := github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
DEB_VERSION ?= $(shell git log -1 --format='0.1.0~git%cd.%h' --date=format:%Y%m%d 2>/dev/null || echo 0.1.0)
DEB_DATE := $(shell git log -1 --format=%cD 2>/dev/null || date -R)
# The package's Maintainer field and changelog signer (nfpm reads it as
# HERD_DEB_MAINTAINER): a site packaging herd sets its own,
# `make deb DEB_MAINTAINER='Lab Admins <admins@lab.example.org>'`.
DEB_MAINTAINER ?= herd maintainers <maintainers@herdlab.org>
deb: deps build
	rm -rf $(BIN)/deb $(BIN)/herd_*.deb && mkdir -p $(BIN)/deb
	$(GO) build -buildmode=pie -ldflags '$(LDFLAGS) -linkmode=external -extldflags=-Wl,-z,relro,-z,now' -o $(BIN)/deb/herd ./cmd/herd
	cp $(BIN)/herd-boot packaging/herd.service packaging/postinst packaging/copyright packaging/lintian-overrides $(BIN)/deb/
	cp examples/herd.yaml $(BIN)/deb/herd.yaml
	$(BIN)/deb/herd gendocs $(BIN)/deb
	gzip -9n $(BIN)/deb/man1/*.1
	printf 'herd (%s) unstable; urgency=medium\n\n  * Built from git %s.\n\n -- %s  %s\n' \
		'$(DEB_VERSION)' '$(VERSION)' '$(DEB_MAINTAINER)' '$(DEB_DATE)' | gzip -9n > $(BIN)/deb/changelog.gz
	cd $(BIN)/deb && HERD_DEB_VERSION='$(DEB_VERSION)' HERD_DEB_MAINTAINER='$(DEB_MAINTAINER)' \
		$(GO) run $(NFPM) package --packager deb --config $(CURDIR)/packaging/nfpm.yaml --target ..

clean:
	rm -rf $(BIN) test.log
