// Swagger UI on the API's own schema. The stored key goes on every request Swagger UI makes (the schema too,
// which is behind the key when keys are configured) and pre-fills the Authorize dialog.

import { apiKey } from "./api.js";
import { installKeyBar } from "./keybar.js";

installKeyBar();
const ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  validatorUrl: null, // the default would call an outside validator service
  deepLinking: true,
  requestInterceptor: (req) => {
    const key = apiKey();
    if (key && !req.headers["X-API-Key"]) req.headers["X-API-Key"] = key;
    return req;
  },
  onComplete: () => {
    if (apiKey()) ui.preauthorizeApiKey("APIKeyHeader", apiKey());
  },
});
window.ui = ui;
