"""The CRM export pipeline (Apache Beam) and its Beam-free settings contract."""
