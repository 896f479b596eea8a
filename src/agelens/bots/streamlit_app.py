"""The agelens Streamlit app: `agelens streamlit`, or `streamlit run` of this file.

Needs the `streamlit` extra (`pip install 'agelens[streamlit]'`). Upload a photo or take one
with the camera; the app shows it with every face boxed, a table of the faces, and the JSON
(`agelens analyze --json`'s shape) to download. It analyses in its own process (the library,
models loaded once per server process) or on a running agelens service through the client:
AGELENS_SERVICE_URL sets the service (AGELENS_API_KEY its key), and the sidebar can change it.
Photos stay in memory for the one analysis.
"""

from __future__ import annotations

import json
import os
from typing import Any

import streamlit as st

from agelens.bots.analysis import Analysis, ImageAnalysis, LibraryAnalysis, ServiceAnalysis

SERVICE_VARIABLE = "AGELENS_SERVICE_URL"
API_KEY_VARIABLE = "AGELENS_API_KEY"
PRESET_VARIABLE = "AGELENS_STREAMLIT_PRESET"
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "heic", "heif"]
IN_PROCESS = "In this process"
ON_A_SERVICE = "On an agelens service"


@st.cache_resource(show_spinner="Loading the models...")
def library_analysis(preset: str) -> LibraryAnalysis:
    """The in-process analysis with `preset`'s models, loaded once per server process."""
    from agelens.models.backends import resolve_models
    from agelens.pipeline import Analyzer

    detector, estimator = resolve_models(preset, None, None)
    return LibraryAnalysis(Analyzer(detector, estimator))


def service_analysis(url: str) -> ServiceAnalysis:
    """The analysis on the service at `url` (a new client per run: they are cheap)."""
    return ServiceAnalysis.connect(url, os.environ.get(API_KEY_VARIABLE) or None)


def faces_table(analysis: Analysis) -> list[dict[str, Any]]:
    """A row per face, for the table."""
    rows = []
    for number, face in enumerate(analysis.result.faces, start=1):
        low, high = face.age_interval
        x1, y1, x2, y2 = face.box_xyxy
        rows.append(
            {
                "face": number,
                "gender": face.gender,
                "gender probability": round(face.gender_probability, 3),
                "age": round(face.age_years, 1),
                "age from": round(low, 1),
                "age to": round(high, 1),
                "detection score": round(face.detection_score, 3),
                "box (x1, y1, x2, y2)": f"{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}",
            }
        )
    return rows


def _analysis_choice() -> ImageAnalysis | None:
    st.sidebar.header("Where to analyse")
    default_service = os.environ.get(SERVICE_VARIABLE, "")
    where = st.sidebar.radio(
        "Analysis", [IN_PROCESS, ON_A_SERVICE], index=1 if default_service else 0, key="where"
    )
    if where == ON_A_SERVICE:
        url = st.sidebar.text_input(
            "Service URL", value=default_service, key="service_url", placeholder="http://..."
        )
        st.sidebar.caption(f"An API key, if the service needs one, comes from {API_KEY_VARIABLE}.")
        if not url.strip():
            st.info("Enter the URL of an agelens service in the sidebar.")
            return None
        return service_analysis(url.strip())
    preset = os.environ.get(PRESET_VARIABLE, "balanced")
    st.sidebar.caption(f"Models: the {preset!r} preset, in this process.")
    try:
        return library_analysis(preset)
    except Exception as error:  # a missing model names the command that fetches it
        st.error(f"The models could not be loaded: {error}")
        return None


def _photo() -> tuple[str, bytes] | None:
    source = st.radio("Photo", ["Upload", "Camera"], horizontal=True, key="source")
    if source == "Camera":
        shot = st.camera_input("Take a photo", key="camera")
        return None if shot is None else ("camera.jpg", shot.getvalue())
    upload = st.file_uploader("Upload a photo", type=UPLOAD_TYPES, key="upload")
    return None if upload is None else (upload.name, upload.getvalue())


def main() -> None:
    """The page."""
    st.set_page_config(page_title="agelens", layout="wide")
    st.title("agelens")
    st.caption(
        "Apparent age and gender of every face in a photo. Ages are apparent, often off by 5 "
        "years or more; gender is a guess from the face alone. Photos are not stored."
    )
    analysis = _analysis_choice()
    photo = _photo()
    if analysis is None or photo is None:
        return
    name, data = photo
    try:
        with st.spinner("Analysing..."):
            analysed = analysis.analyze(data)
    except Exception as error:  # bad images and unreachable services get a message
        st.error(f"{name} could not be analysed: {error}")
        return
    finally:
        if isinstance(analysis, ServiceAnalysis):
            analysis.close()
    result = analysed.result
    body = {**result.to_dict(), "source": name}
    text = json.dumps(body, indent=2)
    st.session_state["result_json"] = text
    count = len(result.faces)
    st.image(analysed.annotated_jpeg, caption=f"{name}: {count} face{'s' * (count != 1)}")
    if count:
        st.dataframe(faces_table(analysed), hide_index=True)
    else:
        st.warning("No face found. Faces that are small, turned away or dark are hard.")
    stem = name.rsplit(".", 1)[0] or "photo"
    st.download_button(
        "Download JSON", text, file_name=f"{stem}.agelens.json", mime="application/json"
    )
    with st.expander("JSON"):
        st.json(body)


main()
