"""The Hydra config tree, a package so that Hydra finds it as ``pkg://broadclass.conf`` when a console script
(``broadclass-train``) imports the entry module instead of running it as ``__main__``."""
