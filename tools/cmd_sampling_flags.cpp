// The sampling options shared by `kmq complete` and `kmq chat` (the chain order is in
// include/kmq/sampling.h).
#include "commands.h"

namespace kmq::tools {

void add_sampler_flags(CLI::App& app, SamplerOptions& s) {
  app.add_option("--temp", s.temperature, "Temperature (0 = greedy)")->capture_default_str();
  app.add_option("--top-k", s.top_k, "Top-k (0 = off)")->capture_default_str();
  app.add_option("--top-p", s.top_p, "Top-p (1 = off)")->capture_default_str();
  app.add_option("--min-p", s.min_p, "Min-p (0 = off)")->capture_default_str();
  app.add_option("--repeat-penalty", s.repeat_penalty, "Repetition penalty (1 = off)")->capture_default_str();
  app.add_option("--presence-penalty", s.presence_penalty, "Presence penalty (0 = off)")->capture_default_str();
  app.add_option("--frequency-penalty", s.frequency_penalty, "Frequency penalty (0 = off)")->capture_default_str();
  app.add_option("--repeat-last-n", s.penalty_last_n, "Tokens the penalties look back on (-1 = all, 0 = off)")
      ->capture_default_str();
  app.add_option("--seed", s.seed, "Random seed")->capture_default_str();
}

}  // namespace kmq::tools
