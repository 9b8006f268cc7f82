"""Building samples: tokenizing, windowing long documents, packing, the whole-corpus plan,
mixtures, and the Arrow tables of samples and documents."""
