"""elastic_nb: run, watch and break PyTorch elastic jobs from a Jupyter notebook."""
