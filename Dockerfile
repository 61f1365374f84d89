# Images for the operator (`sluice`) and the sidecar (`sluice-sidecar`):
#   docker build --target operator -t REGISTRY/sluice:0.1.0 .
#   docker build --target sidecar  -t REGISTRY/sluice-sidecar:0.1.0 .
# Both run as the non-root user 65532 on a distroless base (glibc, CA roots).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The sidecar is built profile-guided (a training run between two builds,
# see sidecar/build-release); the operator is a plain release build.
RUN rustup component add llvm-tools \
 && cargo build --release --locked --bin sluice \
 && sidecar/build-release

FROM gcr.io/distroless/cc-debian12:nonroot AS sidecar
COPY --from=build /src/target/pgo/sluice-sidecar /usr/local/bin/sluice-sidecar
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice-sidecar"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice"]
