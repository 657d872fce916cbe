"""Settings: the base model, device, dtype and helper models of this data root (its config.json), as `storybook
config` shows and changes them. Every page, command and batch spec here uses them where nothing else is named."""

from pathlib import Path

import streamlit as st

from app_pages.common import home, renderers
from storybook.config import DataRootConfig, configured_model, described_settings, load_config
from storybook.errors import StorybookError
from storybook.models import check_model_on_disk
from storybook.render.configure import update_config

DEVICES = ["default", "cuda", "mps", "cpu"]
DTYPES = ["default", "fp32", "fp16", "bf16"]


def model_status(root: Path) -> None:
    """Say whether the base model in use is on this machine, and what to do when it is not."""
    model = configured_model(root)
    try:
        where = check_model_on_disk(model, root)
    except StorybookError as error:
        st.error(str(error))
        return
    st.success(f"The base model {model} is on this machine: {where}")


def settings_form(root: Path, config: DataRootConfig) -> None:
    """The form that changes the settings; an empty field or 'default' goes back to the default."""
    with st.form("settings"):
        model = st.text_input(
            "Base model",
            config.model or "",
            help="storybook-mini, a local diffusers folder, or a downloaded hub id such as "
            "stable-diffusion-v1-5/stable-diffusion-v1-5 (never downloaded here). Empty: the default.",
        )
        devices = DEVICES + ([config.device] if config.device and config.device not in DEVICES else [])  # cuda:1
        device = st.selectbox("Device", devices, index=devices.index(config.device or "default"))
        dtype = st.selectbox("Weights' dtype when drawing", DTYPES, index=DTYPES.index(config.dtype or "default"))
        ip_adapter = st.text_input(
            "IP-Adapter (folder or hub id; empty: the base model's own)", config.ip_adapter or ""
        )
        ip_adapter_weight = st.text_input("Its weights file", config.ip_adapter_weight or "")
        image_encoder = st.text_input("Its image encoder folder", config.image_encoder or "")
        upscaler = st.text_input("x4 upscaler for print files (folder or hub id)", config.upscaler or "")
        safety_checker = st.text_input(
            "Safety checker every picture passes",
            config.safety_checker or "",
            help="A StableDiffusionSafetyChecker folder or downloaded hub id (SDXL ships none: "
            "CompVis/stable-diffusion-safety-checker), or off. Empty: the base model's own.",
        )
        if not st.form_submit_button("Save"):
            return
    entered = {
        "model": model.strip() or None,
        "device": None if device == "default" else device,
        "dtype": None if dtype == "default" else dtype,
        "ip_adapter": ip_adapter.strip() or None,
        "ip_adapter_weight": ip_adapter_weight.strip() or None,
        "image_encoder": image_encoder.strip() or None,
        "upscaler": upscaler.strip() or None,
        "safety_checker": safety_checker.strip() or None,
    }
    # Only what the parent changed: a value set meanwhile by `storybook config` stays as it is.
    changes = {name: value for name, value in entered.items() if value != getattr(config, name)}
    try:
        update_config(root, changes)
    except StorybookError as error:
        st.error(str(error))
        return
    renderers()["renderer"] = None  # the next picture loads the pipeline with these settings
    st.rerun()


root = home()
st.title("Settings")
st.caption(f"The data root {root}: its pages, `storybook` commands and batch specs use these where none is named.")
try:
    current = load_config(root)
except StorybookError as error:
    st.error(str(error))
    st.stop()
settings = described_settings(root)
st.table({"value": {name: value for name, value, _ in settings}, "from": {name: where for name, _, where in settings}})
model_status(root)
settings_form(root, current)
