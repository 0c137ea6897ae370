"""DVC stage `prepare`: generate the people world (database + training documents)."""

from lmpipe.entry import stage
from lmpipe.paths import WORLD
from lmpipe.world import write_world


@stage
def prepare(params, argv):
    stats = write_world(params.world, WORLD)
    print(f"prepare: {stats['people']} trained + {stats['heldout_people']} held-out people, "
          f"{stats['documents']} documents -> {WORLD}")


if __name__ == "__main__":
    prepare()
