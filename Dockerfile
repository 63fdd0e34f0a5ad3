# Postern container image: the server for Cloud Run, and the client too.
#
# Build:   docker build -t postern .
# Server:  the default command. Given its certificates (below) and no other
#          setting, it serves the built-in banner backend
#          (POSTERN_BACKEND=builtin:banner); point it at a real service with
#          POSTERN_BACKEND=HOST:PORT.
#
# No certificate or key is baked into any layer. On Cloud Run they come from
# Secret Manager, mounted as files, one directory per secret:
#   POSTERN_CERT=/secrets/cert/server.pem
#   POSTERN_KEY=/secrets/key/server-key.pem
#   POSTERN_CLIENT_CA=/secrets/ca/ca.pem
# See docs/cloud-run.md and deploy/service.yaml.
#
# Client, from the same image (host networking so local apps reach the port):
#   docker run --rm --network=host -v "$PWD/postern-certs:/certs:ro" postern \
#     client --listen 127.0.0.1:7777 --url https://SERVICE-HASH-REGION.a.run.app \
#     --cert /certs/client.pem --key /certs/client-key.pem --ca /certs/ca.pem
# The image runs as uid 65532, so the mounted key must be readable by it.

# ---- build ----------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, against stub sources, so this layer is reused until
# Cargo.toml, Cargo.lock or the build settings change. .cargo/config.toml
# sets how aws-lc is built (no CPU jitter entropy: see the file).
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
RUN mkdir src \
    && echo '//! stub for the dependency layer' > src/lib.rs \
    && echo 'fn main() {}' > src/main.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. COPY keeps the files' original mtimes, which can be older
# than the stub build; touch them so cargo rebuilds the crate itself instead
# of shipping the stub binary.
COPY src ./src
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked \
    && strip target/release/postern

# ---- runtime --------------------------------------------------------------
# glibc, libgcc and CA certificates; no shell. The :nonroot tag runs as 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /build/target/release/postern /postern

# Cloud Run sets PORT; the server listens on 0.0.0.0:$PORT (8080 if unset).
ENV POSTERN_BACKEND=builtin:banner
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/postern"]
CMD ["server"]
