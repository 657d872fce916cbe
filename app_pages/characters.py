"""Characters: add one from uploaded photos, see its crops, train its identity with live progress, remove it."""

import hashlib
import tempfile
from pathlib import Path

import streamlit as st

from app_pages.common import cached_tokenizer, home, keep_only, show_job
from storybook import registry
from storybook.config import configured_model, load_config
from storybook.errors import PhotoError, StorybookError
from storybook.identities import RECIPES
from storybook.jobs import Progress, is_running, start_job
from storybook.photos import upload_file_name
from storybook.training.personalize import IdentityMethod, recommended_method


def add_character_form(root: Path) -> None:
    """Name, photos and description in; a registered character, or a friendly message per bad photo, out."""
    with st.form("add", clear_on_submit=False):
        name = st.text_input("Name", key="name")
        class_noun = st.text_input("What is it?", value="toddler", key="class_noun")
        description = st.text_input("Appearance in words", placeholder="curly red hair, yellow raincoat")
        uploads = st.file_uploader("3-30 photos", accept_multiple_files=True, key="photos")
        submitted = st.form_submit_button("Add character")
    if not submitted:
        return
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for index, upload in enumerate(uploads or []):
            path = Path(folder) / f"{index:02d}" / upload_file_name(upload.name)  # phones name them all image.jpg
            path.parent.mkdir()
            path.write_bytes(upload.getvalue())
            paths[str(path)] = upload.name
        try:
            with st.spinner("Checking and cropping the photos..."):
                character = registry.add_character(
                    root,
                    name,
                    list(map(Path, paths)),
                    cached_tokenizer(str(root), configured_model(root)),
                    class_noun,
                    description,
                )
        except PhotoError as error:
            for path, problem in error.problems.items():
                st.error(f"{paths.get(path, path)}: {problem}")
            return
        except StorybookError as error:
            st.error(str(error))
            return
    st.success(f"Added {character.name} (token '{character.token}'). Train it below.")


# The app's choices, in a parent's words (storybook.identities.RECIPES lists every method once).
METHODS: dict[str, IdentityMethod] = {recipe.label: name for name, recipe in RECIPES.items() if recipe.label}


def train(root: Path, slug: str, method: IdentityMethod, steps: int | None, restart: bool = False) -> None:
    """Start building `slug`'s identity by `method` as a background job, resuming a training run that was stopped
    (or, with `restart`, discarding it)."""
    from storybook.training.loop import StepReport
    from storybook.training.personalize import build_identity

    resume = (registry.character_dir(root, slug) / "checkpoints").is_dir() and not restart

    def work(progress: Progress) -> str:
        keep_only("train")  # the card for the training alone: the renderer and upscalers kept for later go

        def on_step(report: StepReport) -> None:
            eta = report.elapsed_s / report.step * (report.total - report.step)
            progress(report.step, report.total, f"loss {report.loss:.4f}, about {eta:.0f} s left")

        overrides = {"steps": steps} if steps else {}
        options = {"resume": resume, "restart": restart, "show_progress": False, "on_step": on_step}
        options = options if method != "ip-adapter" else {}
        metadata, image_prompt = build_identity(root, slug, method, configured_model(root), overrides, **options)
        said = []
        if metadata:
            said.append(
                f"Trained in {metadata.wall_time_s:.0f} s: the photos' loss fell from "
                f"{metadata.photo_loss_before:.3f} to {metadata.photo_loss_after:.3f}."
            )
        if image_prompt:
            said.append(
                f"Learned the look from {len(image_prompt.photo_sha256)} photos in {image_prompt.wall_time_s:.1f} s."
            )
        return " ".join(said)

    start_job(root, "train", slug, work)


def training_panel(root: Path, slug: str, folder: Path) -> None:
    """The train button (with an expert steps field), the live job, and the newest sample grid."""
    running = is_running(root, "train", slug)
    trained = registry.is_trained(root, slug)
    stopped = (folder / "checkpoints").is_dir()
    names = list(METHODS)
    recommended = names[list(METHODS.values()).index(recommended_method(configured_model(root)))]
    choice = st.radio("How to learn the look", names, index=names.index(recommended), key=f"method-{slug}")
    with st.popover("Expert settings"):
        steps = st.number_input("Training steps (0: the default)", 0, 5000, 0, key=f"steps-{slug}")
    label = "Resume training" if stopped else ("Train again" if trained else "Train")
    resumed = st.button(label, key=f"train-{slug}", disabled=running)
    # A stopped run that cannot go on (its captions or settings changed) is discarded here, as --restart does.
    restarted = stopped and st.button("Start over", key=f"restart-{slug}", disabled=running)
    if resumed or restarted:
        try:
            train(root, slug, METHODS[choice], int(steps) or None, restart=restarted)
        except StorybookError as error:
            st.error(str(error))
    show_job(root, "train", slug)
    samples = sorted((folder / "samples").glob("*.png"), key=lambda path: path.stat().st_mtime)
    if samples:
        st.image(str(samples[-1]), caption=f"Samples: {samples[-1].stem}", width=288)


def captions_form(root: Path, character: registry.Character) -> None:
    """Each photo's caption, editable, or written by a BLIP captioner the parent names (for the photos without one);
    the methods that train on captions (the hypernetwork) use them."""
    slug = character.slug
    with st.form(f"captions-{slug}"):
        st.caption("Photo captions: what each photo shows (optional; the hypernetwork trains on them)")
        texts = {  # keyed by the saved caption too, so a box shows the file's caption again once it changed
            number: st.text_input(
                f"Photo {number}", photo.caption, max_chars=registry.MAX_CAPTION, key=caption_key(slug, number, photo)
            )
            for number, photo in enumerate(character.photos, 1)
        }
        captioner = st.text_input(
            "Or caption the photos without one with BLIP",
            placeholder="a weights folder or downloaded hub id",
            key=f"blip-{slug}",
        )
        save, write = st.columns(2)
        saved = save.form_submit_button("Save captions")
        written = write.form_submit_button("Caption with BLIP")
    try:
        if saved:
            registry.set_photo_captions(root, slug, texts)
            st.rerun()
        if written:
            if not captioner.strip():
                st.error("Name the BLIP weights first: a local folder or a downloaded hub id.")
                return
            from storybook.captions import caption_character, load_captioner

            with st.spinner("Captioning the photos..."):
                caption_character(root, slug, load_captioner(captioner.strip(), load_config(root).device))
            st.rerun()
    except StorybookError as error:
        st.error(str(error))


def caption_key(slug: str, number: int, photo: registry.PhotoRecord) -> str:
    """The widget key of a photo's caption box: new whenever the saved caption changes (BLIP, the CLI, a save)."""
    return f"caption-{slug}-{number}-{hashlib.sha256(photo.caption.encode()).hexdigest()[:8]}"


def character_list(root: Path) -> None:
    """The registered characters: crops, training and a confirmed remove."""
    characters = registry.list_characters(root)
    if not characters:
        st.info("No characters yet: add one above.")
        return
    for character in characters:
        folder = registry.character_dir(root, character.slug)
        trained = registry.is_trained(root, character.slug)
        title = f"{character.name} — {character.class_noun}, token '{character.token}'"
        with st.expander(title + (" · trained" if trained else " · not trained yet"), expanded=not trained):
            st.write(character.description or "(no description)")
            try:
                crops = registry.prepared_photo_paths(root, character)
            except StorybookError as error:
                st.error(str(error))
                continue
            if missing := [crop.name for crop in crops if not crop.is_file()]:
                st.warning(f"Missing crops: {', '.join(missing)}; remove and add {character.name} again to redo them.")
            st.image([str(crop) for crop in crops if crop.is_file()], width=96)
            captions_form(root, character)
            training_panel(root, character.slug, folder)
            confirm = st.checkbox(f"Yes, delete {character.name} and all photos", key=f"confirm-{character.slug}")
            training = is_running(root, "train", character.slug)
            if st.button("Remove", key=f"remove-{character.slug}", disabled=not confirm or training):
                try:
                    registry.remove_character(root, character.slug)
                except StorybookError as error:
                    st.error(str(error))
                    return
                st.rerun()


root = home()
st.header("Characters")
try:
    load_config(root)  # the model that chooses tokens and trains; a damaged config.json is said once, here
except StorybookError as error:
    st.error(f"{error} (the Settings page shows the settings)")
    st.stop()
add_character_form(root)
character_list(root)
