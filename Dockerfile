# The control plane image that terraform/ deploys on Cloud Run.
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . && useradd --create-home envmgr
USER envmgr
ENV ENVMGR_HOST=0.0.0.0 ENVMGR_PORT=8080
EXPOSE 8080
CMD ["envmgr", "serve"]
