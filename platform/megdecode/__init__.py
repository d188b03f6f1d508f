"""megdecode: decode MEG recordings into image latents and images, at scale on Ray.

The science follows Benchetrit, Banville & King 2023 (arXiv 2310.19812) on THINGS-MEG,
on top of Défossez et al. 2022 (arXiv 2208.12266). Importing the package has no side
effects: no folders are created, no logging is configured, no tracking URI is set.
"""

__version__ = "0.1.0"
