"""`transfer serve`: a finished run's image classifier behind HTTP.

- `server`: the command's steps (checks that need no Keras, the bound
  socket, loading the run, uvicorn).
- `app`: the Starlette application (`create_app`): `POST /predict`,
  `GET /health`, `GET /` (the page).
- `batcher`: concurrent requests gathered into one model call.
- `page`: the self-contained HTML page.

Needs the `serve` extra (`pip install "keras-transfer[serve]"`: Starlette,
uvicorn, python-multipart). Nothing is imported here, so that the
command's quick checks stay quick.
"""
