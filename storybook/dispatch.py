"""Where each spec's book is made: on a Ray cluster (scale_out.py) or in this process (batch.py). The one place that
knows both, so that neither imports the other."""

from collections.abc import Callable
from pathlib import Path

from storybook.batch import MadeBook, load_spec, make_books
from storybook.cluster import RaySettings
from storybook.errors import BookError
from storybook.scale_out import connect, make_books_on_ray


def spec_ray_settings(spec_path: Path) -> RaySettings | None:
    """The Ray settings the spec asks for; None when it asks for none or cannot be read (it fails, saying why, where
    it is made)."""
    try:
        return load_spec(spec_path).ray
    except BookError:
        return None


def renumbered(
    progress: Callable[[int, int, int], None] | None, indexes: list[int]
) -> Callable[[int, int, int], None] | None:
    """`progress` for a run of the specs at `indexes` of a longer list: the run's book numbers become the list's."""
    if progress is None:
        return None
    return lambda book, done, total: progress(indexes[book], done, total)


def make_specs(
    home: Path,
    spec_paths: list[Path],
    ray: RaySettings | None = None,
    say: Callable[[str], None] = print,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[MadeBook]:
    """Make the book of each spec: all on Ray with `ray` when it is given (`storybook make --ray` and its flags),
    else on Ray those whose spec says `ray:` (with the settings it gives) and the others in this process. Returns
    the outcomes in the order of `spec_paths`; a failing book does not stop the others. `progress(book, done,
    total)` as each book's pictures are drawn (`book`: its index in `spec_paths`). Raises BookError when specs drawn
    in one run ask for different Ray settings, or `ray`'s cluster cannot be reached."""
    wanted = {index: ray or spec_ray_settings(path) for index, path in enumerate(spec_paths)}
    on_ray = [index for index, settings in wanted.items() if settings is not None]
    if len(different := {wanted[index] for index in on_ray}) > 1:
        asked = "; ".join(f"{spec_paths[i].name}: {wanted[i].summary()}" for i in on_ray)
        raise BookError(
            f"The specs ask for {len(different)} different Ray settings ({asked}): make them in separate runs, or "
            "give --ray (and its options) to draw them all the same way."
        )
    made: dict[int, MadeBook] = {}
    if on_ray:
        if ray is not None:
            connect(ray.address)  # every book is drawn on that cluster: one that cannot be joined refuses the run

        ray_specs = [spec_paths[i] for i in on_ray]
        try:
            on_ray_made = make_books_on_ray(home, ray_specs, wanted[on_ray[0]], say, renumbered(progress, on_ray))
        except BookError as error:  # no Ray, no cluster, too few GPUs: the books for Ray fail, the others are made
            on_ray_made = [MadeBook(spec=path, error=str(error)) for path in ray_specs]
        made |= dict(zip(on_ray, on_ray_made, strict=True))
    here = [index for index in wanted if index not in made]
    here_made = make_books(home, [spec_paths[i] for i in here], say, renumbered(progress, here))
    made |= dict(zip(here, here_made, strict=True))
    return [made[index] for index in range(len(spec_paths))]
