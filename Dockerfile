# sqsam Label Studio ML backend: slim CPU image, the ONNX model inside, served by gunicorn.
#   docker build -t sqsam-label-studio .
#   docker run -p 9090:9090 -e LABEL_STUDIO_URL=http://label-studio:8080 -e LABEL_STUDIO_API_KEY=... sqsam-label-studio
# docker-compose.yml at the root runs it next to Label Studio.

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Everything `pip install .` needs: the core, the bundled model, the integrations.
COPY pyproject.toml README.md ./
COPY requirements/docker.txt ./requirements/docker.txt
COPY sqsam_core ./sqsam_core
COPY models ./models
COPY integrations ./integrations
# Every dependency at the version requirements/docker.txt pins (`make constraints` refreshes it).
# SQSAM_EXTRAS: the extras installed. Default: the backend, ".[label-studio]"; label-studio,dask
# adds Dask for `sqsam annotate --dask` (docker-compose.yml's "dask" profile builds it so);
# label-studio,train adds PyTorch, so that the backend fine-tunes project models (docs/finetune.md),
# taken from TORCH_INDEX, PyTorch's CPU build (PyPI's Linux torch is the CUDA build, several GB).
ARG SQSAM_EXTRAS=label-studio
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN case ",${SQSAM_EXTRAS}," in *,train,*) set -- --extra-index-url "${TORCH_INDEX}" ;; *) set -- ;; esac \
    && pip wheel --wheel-dir /wheels "$@" -c requirements/docker.txt ".[${SQSAM_EXTRAS}]"

FROM python:3.11-slim
ARG SQSAM_EXTRAS=label-studio
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=9090 \
    WORKERS=1 \
    THREADS=4 \
    LOG_LEVEL=INFO
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "sqsam[${SQSAM_EXTRAS}]" \
    && rm -rf /wheels \
    && useradd --create-home --uid 1000 sqsam \
    && python -c "import sqsam_label_studio.app, sqsam_core; from importlib import resources; \
assert resources.files('sqsam_core.weights').joinpath('squeezesam.onnx').is_file(), 'model missing'"
USER sqsam
WORKDIR /home/sqsam
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090'), timeout=4)"
# One worker process loads the model once; threads share it and its image cache.
# Each ONNX Runtime call uses all cores, so more workers rarely help on a CPU box.
CMD ["sh", "-c", "exec gunicorn --bind 0.0.0.0:${PORT} --workers ${WORKERS} --threads ${THREADS} --timeout 120 --log-level $(echo ${LOG_LEVEL} | tr A-Z a-z) --access-logfile - 'sqsam_label_studio.app:create_app()'"]
