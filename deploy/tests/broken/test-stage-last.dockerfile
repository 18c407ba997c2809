# Broken on purpose (deploy/validate.sh): the test stage, built FROM a stage without USER, comes last, so a
# build naming no --target makes an image that runs as root.
FROM python:3.11-slim-bookworm AS build
RUN pip install --no-cache-dir uv==0.13.9

FROM python:3.11-slim-bookworm AS runtime
USER 10001:10001
CMD ["python"]

FROM build AS test
CMD ["python", "-m", "pytest"]
