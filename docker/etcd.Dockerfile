# etcd from Debian's packages, for machines that can pull debian:bookworm-slim
# (the offline path, scripts/build-images.sh, packages the host's
# /usr/bin/etcd and /usr/bin/etcdctl instead). Same paths, entrypoint and
# user as that image, so compose.yaml works with either:
#
#   docker build -f docker/etcd.Dockerfile -t sluice/etcd:3.4.23 .

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server etcd-client \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/etcd /usr/local/bin/etcd \
 && ln -s /usr/bin/etcdctl /usr/local/bin/etcdctl \
 && groupadd --gid 65532 sluice \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sluice \
 && mkdir -p /var/lib/etcd \
 && chown 65532:65532 /var/lib/etcd
ENV ETCDCTL_API=3
USER 65532:65532
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/etcd"]
