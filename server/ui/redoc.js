// ReDoc on the API's own schema, fetched here with the stored key (ReDoc cannot send headers itself).

import { request } from "./api.js";
import { installKeyBar } from "./keybar.js";
import { problemText } from "./util.js";

installKeyBar();
try {
  const spec = await (await request("GET", "/openapi.json")).json();
  Redoc.init(spec, { hideDownloadButton: false }, document.getElementById("redoc"));
} catch (error) {
  const note = document.getElementById("redoc-error");
  note.textContent = `The API schema could not be loaded: ${problemText(error)}`;
  note.hidden = false;
}
