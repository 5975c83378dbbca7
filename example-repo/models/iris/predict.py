# Runs on every request. Inputs: measurements (sepal length and width, petal length and
# width, in cm). Outputs: species and probability. model and species come from model.pkl.
probabilities = model.predict_proba([measurements])[0]
best = int(probabilities.argmax())
species_name = species[best]
probability = float(probabilities[best])
