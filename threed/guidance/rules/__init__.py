"""Score rules, one file each. A rule is a config dataclass (``kind: Literal["name"] = "name"`` plus its own
settings) and a :class:`~threed.guidance.distillation.ScoreDistillation` subclass whose ``residual``
forms r; the file registers both (``register(Config, Rule)``). Every module here is imported when the
guidance registry is first read, so a new file is all a new rule needs (docs/guidance.md, "Adding a rule").

    SDS         eps_hat(x_t; y) - eps                                   DreamFusion (Poole et al. 2022)
    NFSD        delta_D + s (eps(x_t; y) - eps(x_t; null))             Noise-Free SD (Katzir et al. 2024)
    VSD         eps_hat(x_t; y) - eps_phi(x_t; y, camera)              ProlificDreamer (Wang et al. 2023)
    ISM         eps_hat(x_t; y) - eps(x_s; null), DDIM-inverted x_s, x_t   LucidDreamer (Liang et al. 2023)
    Zero123     SDS with y = the reference image at the view's pose    Zero-1-to-3 (Liu et al. 2023)
    CSD         s (eps(x_t; y) - eps(x_t; null)) [- w_neg (eps(neg) - eps(null))]   Yu et al. 2023
    SDS-Bridge  s (eps(x_t; y) - eps(x_t; y_src)), y_src = the prompt + its artefacts   McAllister et al. 2024
    SDI         eps_hat(x_t; y) - kappa, x_t = DDIM inversion of the render   Lukoianov et al. 2024
    RFDS        v_hat(x_t; y) - (eps - x0) on a flow-matching prior    Yang et al. 2025
    DDS         eps_hat(x_t; y) - eps_hat(x_t^src; y_src), same eps and t   Delta Denoising Score (Hertz et al. 2023)
    PDS         z(x0; y) - z(x0^src; y_src), z the posterior's stochastic latent   Koo et al. 2024

DDS and PDS edit an asset: they compare with the original's render at the same cameras (threed.guidance.editing).
"""
