# The iris model, batched: runs once for up to 64 requests (see iris-batched in
# nodes/models.yaml). measurements is a numpy array with one row per request; each output is
# one value per row, in order. model and species come from model.pkl, as for iris.
probabilities = model.predict_proba(measurements)
best = probabilities.argmax(axis=1)
species_name = [species[i] for i in best]
probability = probabilities.max(axis=1)
