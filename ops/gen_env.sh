#!/usr/bin/env bash
# Writes a compose .env with fresh random secrets: bash ops/gen_env.sh > .env
# Nothing here is a default anyone else has: every value comes from the kernel's random source.
set -euo pipefail
rand() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
cat <<ENV
POSTGRES_PASSWORD=$(rand)
MINIO_ROOT_USER=root-$(rand | head -c 8)
MINIO_ROOT_PASSWORD=$(rand)
FAKESCOPE_S3_SECRET_KEY=$(rand)
FAKESCOPE_SECRET_KEY=$(rand)
FAKESCOPE_INTERNAL_TOKEN=$(rand)
FLOWER_BASIC_AUTH=admin:$(rand)
ENV
