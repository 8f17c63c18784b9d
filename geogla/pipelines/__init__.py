"""Jobs composed of the stages: ``geogla run``'s Dask task waves (:mod:`geogla.pipelines.run`) and
``geogla eval``'s per-image loop over a benchmark split (:mod:`geogla.pipelines.evaluate`)."""
