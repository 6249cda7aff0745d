# Pelagic CSI driver image: the driver and pelagicctl, with the Ceph
# client tools the node mappers run (rbd for krbd, rbd-nbd, rbd-fuse).
FROM golang:1.26-bookworm AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        librados-dev librbd-dev libcephfs-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN make build VERSION=$VERSION BIN=/out

FROM debian:bookworm-slim
# One package list for the image and the Kubernetes e2e's nodes.
COPY deploy/runtime-packages.txt /tmp/
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        $(grep -v '^\s*\(#\|$\)' /tmp/runtime-packages.txt) && \
    rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt
COPY --from=build /out/pelagic /out/pelagicctl /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/pelagic"]
