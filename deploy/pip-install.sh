#!/bin/sh
# pip install into the image's virtual environment (a build step, not shipped in the images), at the
# versions `make test` ran with (deploy/constraints.txt, `make lock`).
# Behind a proxy that re-signs TLS, give its CA bundle as a build secret:
#   --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt
set -eu
if [ -f /run/secrets/pip-ca ]; then
    export PIP_CERT=/run/secrets/pip-ca
fi
export PIP_CONSTRAINT=/src/constraints.txt
exec /opt/driftlm/bin/pip install --no-cache-dir --disable-pip-version-check "$@"
