"""Fit the iris classifier and save the interpreter state the node starts from.

    pip install scikit-learn==1.5.2 numpy==2.4.6   # the versions the node's image gets
    python3 train.py                                # writes model.pkl next to this file

The checkpoint is a pickled dict of variables: the node's code finds them as globals.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

iris = load_iris()
model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
state = {"model": model, "species": [str(name) for name in iris.target_names]}
Path(__file__).with_name("model.pkl").write_bytes(pickle.dumps(state))
print(f"trained on {len(iris.data)} flowers, accuracy {model.score(iris.data, iris.target):.3f}")
