-- Paces each connection: one request every ~2 ms (the quiet tenant of bench/fairness.sh).
function delay()
  return 2
end
