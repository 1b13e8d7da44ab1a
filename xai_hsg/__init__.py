"""Learn a model, read what it learned, check it against a known truth: EP->MS2 contact radii and genomic-LM hidden states.

Modules:

- `xai_hsg.cli`: `xai-hsg`: the command line of the repository.
- `xai_hsg.pipeline`: Run the numbered notebooks of `nbs/` in order with papermill: cached, with progress, failing loudly.
- `xai_hsg.render`: Render the Quarto manuscript in `paper/` to HTML and PDF."""

__version__ = "0.1.0"
