# The router image: the base already holds Debian's nginx; this makes it a foreground container
# whose logs go to docker. The orchestrator mounts the generated nginx.conf over the default one.
ARG BASE_IMAGE=swiftdeploy/base:latest
FROM ${BASE_IMAGE}

RUN ln -sf /dev/stdout /var/log/nginx/access.log \
 && ln -sf /dev/stderr /var/log/nginx/error.log \
 && nginx -t
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
