"""The KServe serving layer: model, V2/V1 contract, CLI and fixes for kserve's gaps."""
