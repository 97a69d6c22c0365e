// Starts Swagger UI on /openapi.json (a file of its own: the page's content
// security policy allows no inline script).
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // Swagger UI would otherwise ask validator.swagger.io for a badge.
  validatorUrl: null,
});
