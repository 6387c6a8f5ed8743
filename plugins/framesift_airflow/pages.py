"""framesift's pages on the Airflow api-server (a FastAPI app the plugin mounts at
``/framesift``), so that the extra links and alerts open wherever the Airflow UI opens:

- ``/framesift/s3/<bucket>/<key>``: an object of the pipeline's outputs (the selection
  and drift reports, frames), read with the pipeline's AWS connection. No presigned URL
  that expires, no bucket the browser must reach; only keys under
  ``storage.output_prefix`` of the output bucket are served.
- ``/framesift/clearml/<dag_id>/<run_id>``: the run's ClearML task: the server's page
  when the run went to a ClearML server, else a page of the offline session (task,
  parameters, scalars, artifacts, the import step) and ``.../session.zip`` to download it.

Every page needs a logged-in Airflow user allowed to read the DAG (the UI's session cookie
or a bearer token); a browser without one is sent to the login page.
"""

from __future__ import annotations

import mimetypes
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

DAG_OF_OUTPUTS = "framesift_ingest"  # whoever may read this DAG may read its outputs


app = FastAPI(title="framesift pages", docs_url=None, redoc_url=None, openapi_url=None)


async def _user(request: Request):
    from airflow.api_fastapi.core_api.security import get_user

    auth = request.headers.get("authorization", "")
    bearer = None
    if auth.lower().startswith("bearer "):
        from fastapi.security import HTTPAuthorizationCredentials

        bearer = HTTPAuthorizationCredentials(scheme="Bearer", credentials=auth.split(" ", 1)[1])
    return await get_user(request, None, bearer)


User = Annotated[Any, Depends(_user)]


@app.exception_handler(HTTPException)
async def _login_first(request: Request, exc: HTTPException):
    """A browser that is not logged in goes to Airflow's login page, and comes back."""
    if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
        from airflow.api_fastapi.app import get_auth_manager

        login = get_auth_manager().get_url_login()
        target = str(request.url)
        return RedirectResponse(f"{login}{'&' if '?' in login else '?'}next={quote(target, safe='')}")
    return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")


def _allowed(user, dag_id: str) -> None:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    if not get_auth_manager().is_authorized_dag(method="GET", user=user, details=DagDetails(id=dag_id)):
        raise HTTPException(status_code=403, detail=f"not allowed to read DAG {dag_id}")


@lru_cache(maxsize=1)
def _hook():
    from framesift_airflow.hooks import FramesiftHook

    return FramesiftHook()


@app.get("/s3/{bucket}/{key:path}")
def s3_object(bucket: str, key: str, user: User) -> Response:
    from botocore.exceptions import ClientError

    _allowed(user, DAG_OF_OUTPUTS)
    hook = _hook()
    storage = hook.config.storage
    if bucket != storage.out_bucket or not key.startswith(storage.output_prefix) or ".." in key.split("/"):
        raise HTTPException(status_code=404, detail="not one of framesift's outputs")
    try:
        obj = hook.s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        raise HTTPException(status_code=404, detail=f"s3://{bucket}/{key}: {code}") from None
    ctype = obj.get("ContentType") or mimetypes.guess_type(key)[0] or "application/octet-stream"
    if ctype == "binary/octet-stream":
        ctype = mimetypes.guess_type(key)[0] or ctype
    return Response(obj["Body"].read(), media_type=ctype, headers={"Cache-Control": "private, max-age=300"})


def _tracked(dag_id: str, run_id: str) -> dict[str, Any]:
    from framesift.tracking.runs import previous_tracked

    tracked = previous_tracked(_hook().db, dag_id, run_id)
    if not tracked:
        raise HTTPException(status_code=404, detail=f"no ClearML task recorded for {dag_id} run {run_id}")
    return tracked


@app.get("/clearml/{dag_id}/{run_id}", response_class=HTMLResponse)
def clearml_page(dag_id: str, run_id: str, user: User, request: Request) -> Response:
    from pathlib import Path

    from framesift.tracking.offline_page import render_page, session_summary

    _allowed(user, dag_id)
    tracked = _tracked(dag_id, run_id)
    zip_path = tracked.get("offline_zip")
    if not zip_path:
        return RedirectResponse(tracked.get("url") or "/")
    if not Path(zip_path).is_file():
        raise HTTPException(status_code=404, detail=f"the offline session {zip_path} is not on this machine")
    page = render_page(
        session_summary(zip_path),
        download_url=str(request.url).split("?", 1)[0].rstrip("/") + "/session.zip",
        run_label=f"{dag_id}, run {run_id}",
    )
    return HTMLResponse(page)


@app.get("/clearml/{dag_id}/{run_id}/session.zip")
def clearml_zip(dag_id: str, run_id: str, user: User) -> Response:
    from pathlib import Path

    _allowed(user, dag_id)
    zip_path = _tracked(dag_id, run_id).get("offline_zip")
    if not zip_path or not Path(zip_path).is_file():
        raise HTTPException(status_code=404, detail="no offline session for this run on this machine")
    return FileResponse(zip_path, media_type="application/zip", filename=Path(zip_path).name)
