"""Settings of our server in the end-to-end benchmark: ``bench.settings`` plus a producer view."""

from bench.settings import *  # noqa: F403

ROOT_URLCONF = "bench.peers.ours_urls"
