"""The Train page (:mod:`.page`), composed of the form (:mod:`.form`), the jobs panel (:mod:`.jobs`) and the
strategy comparison (:mod:`.comparison`)."""
