# dispatch container image.
#
#   docker build -t dispatch \
#     --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg COMMIT=$(git rev-parse --short HEAD) \
#     --build-arg BUILD_TIME=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
#   docker run -e PLACE_SERVER_SECRET=... -p 3000:3000 -p 6001:6001 -p 162:162/udp dispatch
#
# Device ports are opened on demand, when a driver attaches to
# tcp_dispatch/udp_dispatch?port=P, so they cannot be listed here: publish
# every port your drivers ask for (-p P:P, -p P:P/udp, or a LoadBalancer
# Service, see deploy/). The container side must be the same number the
# driver asks for.
#
# The process runs as UID 65532. Ports below 1024 (SNMP traps on UDP 162)
# need net.ipv4.ip_unprivileged_port_start <= the port in the container's
# network namespace (Docker and Podman set it to 0 by default; in Kubernetes
# set it as a pod sysctl, see deploy/kubernetes.yaml) or CAP_NET_BIND_SERVICE
# in the process's effective set, which a non-root user does not get from
# --cap-add alone.

# The Go toolchain must be at least the go line of go.mod (the image sets
# GOTOOLCHAIN=local, so it will not download a newer one).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
ARG BUILD_TIME=unknown
# Static binary: no cgo, so it runs on distroless/static (or scratch).
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags="-s -w -X 'main.version=${VERSION}' -X 'main.commit=${COMMIT}' -X 'main.buildTime=${BUILD_TIME}'" \
      -o /out/dispatch ./cmd/dispatch

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="dispatch" \
      org.opencontainers.image.description="PlaceOS dispatch: device TCP/UDP ports multiplexed to drivers over WebSockets" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/dispatch /dispatch
# Numeric, so that Kubernetes runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
ENV SG_SERVER_HOST=0.0.0.0 \
    SG_SERVER_PORT=3000 \
    SG_ENV=production
# The HTTP/WebSocket API. Device ports: see the note at the top.
EXPOSE 3000
# -c exits 0 for a 2xx-4xx answer. The port is fixed here: if you change
# SG_SERVER_PORT, override the health check too.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/dispatch", "-c", "http://127.0.0.1:3000/api/dispatch/v1/healthz"]
ENTRYPOINT ["/dispatch"]
