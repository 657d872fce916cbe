"""The character registry: each character is a folder under <home>/characters/<slug>/ described by character.json.

Layout: character.json, photos/ (originals, untouched), prepared/ (square crops), identity/ (trained artifact),
samples/ (validation grids), checkpoints/ (while training).
"""

import hashlib
import json
import re
import shutil
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator

from storybook.errors import CharacterError, describe_problems
from storybook.identifier import choose_token
from storybook.storage import InsidePath, atomic_write_text, build_folder, contained, file_lock, slugify
from storybook.text import hidden_characters, plain

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

SCHEMA_VERSION = 1
IDENTITY_RECORDS = ("identity.json", "image_prompt.json")
MAX_NAME, MAX_CLASS_NOUN, MAX_DESCRIPTION, MAX_CAPTION = 100, 40, 300, 200
SUFFIX_PATTERN = re.compile(r"\.[a-z0-9]{1,10}")  # an original keeps its extension when it is a plain one
PREPARED_MAX_SIDE = 1024  # crops are kept at up to SDXL's size; training resizes them to its model's resolution
REMOVING = ".removing"  # in a character's folder while it is removed: a build of its identity stops at its next step


class PhotoRecord(BaseModel):
    """One registered photo: the parent's file name, the stored original and its prepared crop."""

    original_name: str
    stored: InsidePath  # relative to the character folder
    prepared: InsidePath
    sha256: str
    caption: str = Field("", max_length=MAX_CAPTION)  # what the photo shows, e.g. 'a little girl waving' (editable)

    @field_validator("caption")
    @classmethod
    def caption_is_clean(cls, caption: str) -> str:
        """A caption read from character.json reaches training prompts: as `check_caption` leaves it."""
        if caption != clean_caption(caption) or hidden_characters(caption):
            raise ValueError("a photo caption is one line of words, without control characters or extra spaces")
        return caption


class Character(BaseModel):
    """character.json: who the character is and which token its identity is bound to."""

    schema_version: int = SCHEMA_VERSION
    # plain text (storybook/text.py) of the lengths `add_character` allows
    name: Annotated[str, Field(max_length=MAX_NAME), AfterValidator(plain)]
    slug: str
    class_noun: Annotated[str, Field(max_length=MAX_CLASS_NOUN), AfterValidator(plain)]
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION), AfterValidator(plain)] = ""
    token: str = Field(pattern=r"^[a-z]{2,32}$")  # a made-up word (identifier.py); names files of some identities
    photos: list[PhotoRecord]
    created_at: datetime

    @property
    def instance_prompt(self) -> str:
        """The training caption of the character's photos, e.g. 'a photo of zorv toddler'."""
        return f"a photo of {self.token} {self.class_noun}"


def characters_root(home: Path) -> Path:
    """The folder holding every character of the data root `home`."""
    return home / "characters"


def character_dir(home: Path, name: str) -> Path:
    """The folder of character `name` (a display name or slug); refuses unsafe names."""
    return characters_root(home) / slugify(name)


def identity_folder(home: Path, name: str) -> Path:
    """The folder of character `name`'s trained identity (see storybook.identities.record)."""
    return character_dir(home, name) / "identity"


def prepared_photo_paths(home: Path, character: Character) -> list[Path]:
    """The character's prepared crops. Raises CharacterError when character.json points outside its folder."""
    folder = character_dir(home, character.slug)
    paths = [contained(folder, record.prepared) for record in character.photos]
    if outside := [record.prepared for record, path in zip(character.photos, paths, strict=True) if path is None]:
        raise CharacterError(
            f"{folder / 'character.json'} points outside the character's folder ({', '.join(outside)}); remove and "
            "add the character again."
        )
    return [path for path in paths if path is not None]


def identity_records(home: Path, name: str) -> list[Path]:
    """The records of character `name`'s identity that exist: identity.json (trained weights) and image_prompt.json
    (an IP-Adapter image embedding), each written last when its part is complete."""
    folder = identity_folder(home, name)
    return [folder / record for record in IDENTITY_RECORDS if (folder / record).is_file()]


def identity_hash(home: Path, slug: str) -> str:
    """A short hash of the identity's records (trained weights, image prompt): it changes whenever the identity is
    built again. Raises CharacterError when the character has no identity yet."""
    records = identity_records(home, slug)
    if not records:
        raise CharacterError(f"{slug} has no trained identity yet: run `storybook character train {slug}` first.")
    return hashlib.sha256(b"".join(record.read_bytes() for record in records)).hexdigest()[:16]


def is_trained(home: Path, name: str) -> bool:
    """Whether character `name` has an identity (trained weights, an image prompt or both)."""
    return bool(identity_records(home, name))


def load_character(home: Path, name: str) -> Character:
    """Read character.json of `name`. Raises CharacterError when it is missing, damaged or from a newer version."""
    record = character_dir(home, name) / "character.json"
    if not record.is_file():
        known = ", ".join(c.name for c in list_characters(home)) or "none yet"
        raise CharacterError(f"No character named {name!r} (known: {known}). Add one with `storybook character add`.")
    return read_character(record)


def read_character(record: Path) -> Character:
    """Read the character.json at `record`. Raises CharacterError when it is damaged or from a newer version."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CharacterError(f"{record} is damaged ({error}); remove and add the character again.") from error
    if not isinstance(data, dict):
        raise CharacterError(f"{record} is damaged (not a JSON object); remove and add the character again.")
    if not isinstance(data.get("schema_version", 0), int) or data.get("schema_version", 0) > SCHEMA_VERSION:
        raise CharacterError(f"{record} was written by a newer storybook; upgrade storybook to use it.")
    try:
        return Character.model_validate(data)
    except ValidationError as error:
        raise CharacterError(f"{record} is not a valid character file ({describe_problems(error)}).") from None


def save_character(home: Path, character: Character) -> None:
    """Write character.json atomically."""
    atomic_write_text(character_dir(home, character.slug) / "character.json", character.model_dump_json(indent=2))


def list_characters(home: Path) -> list[Character]:
    """Every readable registered character, sorted by slug.

    Folders without a character.json are ignored, and a damaged record is skipped with a warning, so that one bad
    file does not hide the other characters or block adding new ones.
    """
    root = characters_root(home)
    characters = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.name.startswith(".") and (folder / "character.json").is_file():  # not one being built
            try:
                characters.append(read_character(folder / "character.json"))
            except CharacterError as error:
                warnings.warn(str(error), stacklevel=2)
    return characters


def add_character(
    home: Path,
    name: str,
    photo_paths: Sequence[Path],
    tokenizer: "CLIPTokenizer",
    class_noun: str = "toddler",
    description: str = "",
) -> Character:
    """Register a character from photos: check them, keep the originals, save square crops, choose its token.

    Everything is built in a hidden folder and moved into place at the end, so a failure leaves nothing behind.
    Raises InvalidNameError, CharacterError (name taken) or PhotoError (listing every bad photo).
    """
    from storybook.photos import load_photos, prepare_photo  # OpenCV and friends: only when photos come in

    slug = slugify(name)
    if len(name.strip()) > MAX_NAME or hidden_characters(name):
        raise CharacterError(f"A name is one line of at most {MAX_NAME} characters, e.g. 'Mia Rose'.")
    class_noun, description = check_class_noun(class_noun), check_description(description)
    folder = characters_root(home) / slug
    if folder.exists():
        raise CharacterError(f"A character named {name!r} already exists; pick another name or remove it first.")
    images = load_photos(photo_paths)
    taken = {character.token for character in list_characters(home)}
    token = choose_token(tokenizer, seed_text=slug, taken=taken, avoid=f"{class_noun} {name}")

    try:
        with build_folder(folder, replace=False) as building:
            (building / "photos").mkdir()
            (building / "prepared").mkdir()
            records = []
            for index, (path, image) in enumerate(zip(photo_paths, images, strict=True)):
                original = Path(path).read_bytes()
                suffix = Path(path).suffix.lower()
                stored = f"photos/{index:02d}" + (suffix if SUFFIX_PATTERN.fullmatch(suffix) else "")
                (building / stored).write_bytes(original)
                prepared = f"prepared/{index:02d}.png"
                prepare_photo(image, min(PREPARED_MAX_SIDE, min(image.size))).save(building / prepared)
                records.append(
                    PhotoRecord(
                        original_name=Path(path).name,
                        stored=stored,
                        prepared=prepared,
                        sha256=hashlib.sha256(original).hexdigest(),
                    )
                )
            character = Character(
                name=name.strip(),
                slug=slug,
                class_noun=class_noun,
                description=description,
                token=token,
                photos=records,
                created_at=datetime.now(timezone.utc),
            )
            (building / "character.json").write_text(character.model_dump_json(indent=2))
    except OSError:
        if folder.exists():  # another add of the same name finished first
            raise CharacterError(
                f"A character named {name!r} already exists; pick another name or remove it first."
            ) from None
        raise
    return character


def check_class_noun(class_noun: str) -> str:
    """`class_noun` stripped, when it is a word or a few: letters (with their marks) of any script, spaces, ' and -,
    starting with a letter, at most MAX_CLASS_NOUN characters. Raises CharacterError otherwise."""
    noun = class_noun.strip()
    allowed = [unicodedata.category(c)[0] in "LM" or c in " '-" for c in noun]
    if not noun or unicodedata.category(noun[0])[0] != "L" or not all(allowed) or len(noun) > MAX_CLASS_NOUN:
        raise CharacterError(
            f"The class noun {class_noun!r} is not a word or two of letters (at most {MAX_CLASS_NOUN} characters): "
            "say what the character is, e.g. 'toddler', 'baby girl' or 'teddy bear'."
        )
    return noun


def check_description(description: str) -> str:
    """`description` stripped, when it is one line of at most MAX_DESCRIPTION characters. Raises CharacterError."""
    text = description.strip()
    if len(text) > MAX_DESCRIPTION or hidden_characters(text):
        raise CharacterError(
            f"The description must be one line of at most {MAX_DESCRIPTION} characters (it is {len(text)}, "
            "control characters not allowed), e.g. 'curly red hair, yellow raincoat'."
        )
    return text


def clean_caption(caption: str) -> str:
    """`caption` in Unicode NFC with its whitespace runs (line breaks and tabs too) made single spaces, stripped."""
    return " ".join(unicodedata.normalize("NFC", caption).split())


def check_caption(caption: str, photo: str = "A photo caption") -> str:
    """`caption` cleaned (`clean_caption`), when it is at most MAX_CAPTION characters without control characters.
    Raises CharacterError naming `photo` and what is wrong."""
    text = clean_caption(caption)
    if len(text) > MAX_CAPTION:
        raise CharacterError(f"{photo}: a caption is at most {MAX_CAPTION} characters, this one {len(text)}.")
    if hidden_characters(text):
        raise CharacterError(f"{photo}: a caption is plain text; remove its control or invisible characters.")
    return text


def set_photo_captions(home: Path, name: str, captions: dict[int, str]) -> Character:
    """Give photos of character `name` new captions ({photo number from 1: caption}; '' clears one) and save
    character.json (when anything changed); return the updated character. Every caption is checked before anything
    is written.

    Raises CharacterError for an unknown photo number or a bad caption.
    """
    character = load_character(home, name)
    photos = list(character.photos)
    for number, caption in captions.items():
        if not 1 <= number <= len(photos):
            raise CharacterError(f"{character.name} has photos 1-{len(photos)}, not photo {number}.")
        text = check_caption(caption, f"Photo {number} of {character.name}")
        photos[number - 1] = photos[number - 1].model_copy(update={"caption": text})
    updated = character.model_copy(update={"photos": photos})
    if updated != character:
        save_character(home, updated)
    return updated


def character_lock(home: Path, slug: str) -> Path:
    """The lock file (see `file_lock`) of character `slug`: a build of its identity holds it, and `remove_character`
    while it deletes the folder. It lies beside the folder, so that taking it never makes a removed folder again."""
    return characters_root(home) / f".{slug}.lock"


def check_not_removed(home: Path, character: Character) -> None:
    """Raises CharacterError when `character` is being removed (or is gone): a build of its identity then stops and
    writes nothing more."""
    folder = character_dir(home, character.slug)
    if (folder / REMOVING).exists() or not (folder / "character.json").is_file():
        raise CharacterError(
            f"{character.name} is being removed, so its identity is not built and nothing of the build is kept (a "
            f"removal that was stopped half-way is finished by `storybook character remove {character.slug}`)."
        )


def remove_character(home: Path, name: str, waiting: Callable[[], None] = lambda: None) -> Path:
    """Delete every file of character `name` (photos, crops, identity, samples, checkpoints); return the folder.

    A build of its identity in progress, in any process, is asked to stop (it does at its next step, writing nothing
    more) and waited for, `waiting()` called first; the folder is deleted once it has ended, so that no build writes
    into it again. Raises CharacterError when there is no such character.
    """
    folder = character_dir(home, name)
    if not folder.is_dir():
        raise CharacterError(f"No character named {name!r}; `storybook character list` shows who is registered.")
    (folder / REMOVING).touch()
    with file_lock(character_lock(home, folder.name), waiting):
        shutil.rmtree(folder)
    return folder
