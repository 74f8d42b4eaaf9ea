// Swagger UI on the service's own OpenAPI document, from the vendored bundle (no CDN: the
// docs work on a closed network).
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
